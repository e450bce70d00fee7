-- AlterTable
ALTER TABLE "Job" ADD COLUMN     "memoryBytes" DOUBLE PRECISION;

