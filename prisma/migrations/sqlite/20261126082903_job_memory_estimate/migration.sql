-- AlterTable
ALTER TABLE "Job" ADD COLUMN "memoryBytes" REAL;

