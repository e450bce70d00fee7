-- AlterTable
ALTER TABLE "ChatMessage" ADD COLUMN     "tokenIds" JSONB;

