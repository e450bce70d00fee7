-- CreateSchema
CREATE SCHEMA IF NOT EXISTS "public";

-- CreateTable
CREATE TABLE "Agent" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "tokenHash" TEXT NOT NULL,
    "embedded" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "revokedAt" TIMESTAMP(3),
    "inventory" JSONB,
    "backend" TEXT,
    "hostname" TEXT,
    "gpuCount" INTEGER NOT NULL DEFAULT 0,
    "gpuMemoryBytes" DOUBLE PRECISION,
    "lastSeenAt" TIMESTAMP(3),
    "online" BOOLEAN NOT NULL DEFAULT false,

    CONSTRAINT "Agent_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Experiment" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "spec" JSONB NOT NULL,
    "model" TEXT NOT NULL,
    "device" TEXT NOT NULL,
    "targetAgent" TEXT,
    "tags" JSONB NOT NULL,
    "tagList" TEXT NOT NULL DEFAULT '',
    "notes" TEXT NOT NULL DEFAULT '',
    "createdBy" TEXT,
    "source" TEXT NOT NULL DEFAULT 'online',
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Experiment_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Job" (
    "id" TEXT NOT NULL,
    "experimentId" TEXT NOT NULL,
    "index" INTEGER NOT NULL,
    "config" JSONB NOT NULL,
    "model" TEXT NOT NULL,
    "attention" TEXT NOT NULL,
    "kvCache" BOOLEAN NOT NULL,
    "tp" INTEGER NOT NULL,
    "dtype" TEXT NOT NULL,
    "device" TEXT NOT NULL,
    "batchSize" INTEGER NOT NULL,
    "promptLength" INTEGER NOT NULL,
    "newTokens" INTEGER NOT NULL,
    "configKey" TEXT NOT NULL,
    "targetAgent" TEXT,
    "state" TEXT NOT NULL DEFAULT 'queued',
    "attempt" INTEGER NOT NULL DEFAULT 0,
    "failedAttempts" INTEGER NOT NULL DEFAULT 0,
    "maxAttempts" INTEGER NOT NULL DEFAULT 3,
    "leaseHolderId" TEXT,
    "leaseExpiresAt" TIMESTAMP(3),
    "progress" DOUBLE PRECISION NOT NULL DEFAULT 0,
    "progressMessage" TEXT,
    "error" TEXT,
    "cancelRequested" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    "startedAt" TIMESTAMP(3),
    "finishedAt" TIMESTAMP(3),

    CONSTRAINT "Job_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "JobLog" (
    "id" SERIAL NOT NULL,
    "jobId" TEXT NOT NULL,
    "attempt" INTEGER NOT NULL,
    "ts" TIMESTAMP(3) NOT NULL,
    "level" TEXT NOT NULL,
    "text" TEXT NOT NULL,

    CONSTRAINT "JobLog_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Run" (
    "id" TEXT NOT NULL,
    "jobId" TEXT,
    "attempt" INTEGER,
    "experimentId" TEXT NOT NULL,
    "model" TEXT NOT NULL,
    "weightsKind" TEXT NOT NULL,
    "attention" TEXT NOT NULL,
    "kvCache" BOOLEAN NOT NULL,
    "tp" INTEGER NOT NULL,
    "dtype" TEXT NOT NULL,
    "device" TEXT NOT NULL,
    "batchSize" INTEGER NOT NULL,
    "promptLength" INTEGER NOT NULL,
    "newTokens" INTEGER NOT NULL,
    "warmup" INTEGER NOT NULL,
    "repeatCount" INTEGER NOT NULL,
    "configKey" TEXT NOT NULL,
    "prefillMsMedian" DOUBLE PRECISION NOT NULL,
    "prefillMsMean" DOUBLE PRECISION NOT NULL,
    "prefillMsStd" DOUBLE PRECISION NOT NULL,
    "prefillMsP90" DOUBLE PRECISION NOT NULL,
    "tpotMsMedian" DOUBLE PRECISION NOT NULL,
    "tpotMsMean" DOUBLE PRECISION NOT NULL,
    "tpotMsStd" DOUBLE PRECISION NOT NULL,
    "tpotMsP90" DOUBLE PRECISION NOT NULL,
    "totalMsMedian" DOUBLE PRECISION NOT NULL,
    "totalMsMean" DOUBLE PRECISION NOT NULL,
    "totalMsStd" DOUBLE PRECISION NOT NULL,
    "tokensPerSecMedian" DOUBLE PRECISION NOT NULL,
    "tokensPerSecMean" DOUBLE PRECISION NOT NULL,
    "peakMemBytes" DOUBLE PRECISION NOT NULL,
    "kvCacheBytes" DOUBLE PRECISION,
    "weightsBytes" DOUBLE PRECISION,
    "repeats" JSONB NOT NULL,
    "summary" JSONB NOT NULL,
    "environment" JSONB NOT NULL,
    "sampleTokens" JSONB,
    "gpuName" TEXT,
    "gpuCount" INTEGER NOT NULL DEFAULT 0,
    "agentName" TEXT NOT NULL,
    "hostname" TEXT NOT NULL,
    "engineBuild" TEXT NOT NULL,
    "gitCommit" TEXT,
    "tags" JSONB NOT NULL,
    "tagList" TEXT NOT NULL DEFAULT '',
    "notes" TEXT NOT NULL DEFAULT '',
    "source" TEXT NOT NULL DEFAULT 'online',
    "startedAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Run_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "ChatSession" (
    "id" TEXT NOT NULL,
    "title" TEXT NOT NULL,
    "settings" JSONB NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "ChatSession_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "ChatMessage" (
    "id" TEXT NOT NULL,
    "sessionId" TEXT NOT NULL,
    "role" TEXT NOT NULL,
    "content" TEXT NOT NULL,
    "requestId" TEXT,
    "status" TEXT NOT NULL DEFAULT 'done',
    "agentName" TEXT,
    "model" TEXT,
    "weightsKind" TEXT,
    "attention" TEXT,
    "kvCache" BOOLEAN,
    "tp" INTEGER,
    "dtype" TEXT,
    "device" TEXT,
    "prefillMs" DOUBLE PRECISION,
    "tokensPerSec" DOUBLE PRECISION,
    "tpotMs" DOUBLE PRECISION,
    "newTokens" INTEGER,
    "stoppedBy" TEXT,
    "error" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "ChatMessage_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "Agent_name_key" ON "Agent"("name");

-- CreateIndex
CREATE UNIQUE INDEX "Agent_tokenHash_key" ON "Agent"("tokenHash");

-- CreateIndex
CREATE INDEX "Agent_online_idx" ON "Agent"("online");

-- CreateIndex
CREATE INDEX "Experiment_createdAt_idx" ON "Experiment"("createdAt");

-- CreateIndex
CREATE INDEX "Experiment_model_idx" ON "Experiment"("model");

-- CreateIndex
CREATE INDEX "Job_state_createdAt_idx" ON "Job"("state", "createdAt");

-- CreateIndex
CREATE INDEX "Job_state_leaseExpiresAt_idx" ON "Job"("state", "leaseExpiresAt");

-- CreateIndex
CREATE INDEX "Job_leaseHolderId_idx" ON "Job"("leaseHolderId");

-- CreateIndex
CREATE INDEX "Job_updatedAt_idx" ON "Job"("updatedAt");

-- CreateIndex
CREATE UNIQUE INDEX "Job_experimentId_index_key" ON "Job"("experimentId", "index");

-- CreateIndex
CREATE INDEX "JobLog_jobId_id_idx" ON "JobLog"("jobId", "id");

-- CreateIndex
CREATE INDEX "Run_experimentId_idx" ON "Run"("experimentId");

-- CreateIndex
CREATE INDEX "Run_configKey_idx" ON "Run"("configKey");

-- CreateIndex
CREATE INDEX "Run_createdAt_idx" ON "Run"("createdAt");

-- CreateIndex
CREATE INDEX "Run_model_attention_kvCache_tp_idx" ON "Run"("model", "attention", "kvCache", "tp");

-- CreateIndex
CREATE INDEX "Run_prefillMsMedian_idx" ON "Run"("prefillMsMedian");

-- CreateIndex
CREATE INDEX "Run_tpotMsMedian_idx" ON "Run"("tpotMsMedian");

-- CreateIndex
CREATE INDEX "Run_totalMsMedian_idx" ON "Run"("totalMsMedian");

-- CreateIndex
CREATE INDEX "Run_tokensPerSecMedian_idx" ON "Run"("tokensPerSecMedian");

-- CreateIndex
CREATE INDEX "Run_peakMemBytes_idx" ON "Run"("peakMemBytes");

-- CreateIndex
CREATE INDEX "Run_gpuName_idx" ON "Run"("gpuName");

-- CreateIndex
CREATE INDEX "Run_agentName_idx" ON "Run"("agentName");

-- CreateIndex
CREATE UNIQUE INDEX "Run_jobId_attempt_key" ON "Run"("jobId", "attempt");

-- CreateIndex
CREATE INDEX "ChatSession_updatedAt_idx" ON "ChatSession"("updatedAt");

-- CreateIndex
CREATE UNIQUE INDEX "ChatMessage_requestId_key" ON "ChatMessage"("requestId");

-- CreateIndex
CREATE INDEX "ChatMessage_sessionId_createdAt_idx" ON "ChatMessage"("sessionId", "createdAt");

-- AddForeignKey
ALTER TABLE "Job" ADD CONSTRAINT "Job_experimentId_fkey" FOREIGN KEY ("experimentId") REFERENCES "Experiment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Job" ADD CONSTRAINT "Job_leaseHolderId_fkey" FOREIGN KEY ("leaseHolderId") REFERENCES "Agent"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "JobLog" ADD CONSTRAINT "JobLog_jobId_fkey" FOREIGN KEY ("jobId") REFERENCES "Job"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Run" ADD CONSTRAINT "Run_jobId_fkey" FOREIGN KEY ("jobId") REFERENCES "Job"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Run" ADD CONSTRAINT "Run_experimentId_fkey" FOREIGN KEY ("experimentId") REFERENCES "Experiment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "ChatMessage" ADD CONSTRAINT "ChatMessage_sessionId_fkey" FOREIGN KEY ("sessionId") REFERENCES "ChatSession"("id") ON DELETE CASCADE ON UPDATE CASCADE;

