-- CreateTable
CREATE TABLE "Agent" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "name" TEXT NOT NULL,
    "tokenHash" TEXT NOT NULL,
    "embedded" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "revokedAt" DATETIME,
    "inventory" JSONB,
    "backend" TEXT,
    "hostname" TEXT,
    "gpuCount" INTEGER NOT NULL DEFAULT 0,
    "gpuMemoryBytes" REAL,
    "lastSeenAt" DATETIME,
    "online" BOOLEAN NOT NULL DEFAULT false
);

-- CreateTable
CREATE TABLE "Experiment" (
    "id" TEXT NOT NULL PRIMARY KEY,
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
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- CreateTable
CREATE TABLE "Job" (
    "id" TEXT NOT NULL PRIMARY KEY,
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
    "leaseExpiresAt" DATETIME,
    "progress" REAL NOT NULL DEFAULT 0,
    "progressMessage" TEXT,
    "error" TEXT,
    "cancelRequested" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" DATETIME NOT NULL,
    "startedAt" DATETIME,
    "finishedAt" DATETIME,
    CONSTRAINT "Job_experimentId_fkey" FOREIGN KEY ("experimentId") REFERENCES "Experiment" ("id") ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT "Job_leaseHolderId_fkey" FOREIGN KEY ("leaseHolderId") REFERENCES "Agent" ("id") ON DELETE SET NULL ON UPDATE CASCADE
);

-- CreateTable
CREATE TABLE "JobLog" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "jobId" TEXT NOT NULL,
    "attempt" INTEGER NOT NULL,
    "ts" DATETIME NOT NULL,
    "level" TEXT NOT NULL,
    "text" TEXT NOT NULL,
    CONSTRAINT "JobLog_jobId_fkey" FOREIGN KEY ("jobId") REFERENCES "Job" ("id") ON DELETE CASCADE ON UPDATE CASCADE
);

-- CreateTable
CREATE TABLE "Run" (
    "id" TEXT NOT NULL PRIMARY KEY,
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
    "prefillMsMedian" REAL NOT NULL,
    "prefillMsMean" REAL NOT NULL,
    "prefillMsStd" REAL NOT NULL,
    "prefillMsP90" REAL NOT NULL,
    "tpotMsMedian" REAL NOT NULL,
    "tpotMsMean" REAL NOT NULL,
    "tpotMsStd" REAL NOT NULL,
    "tpotMsP90" REAL NOT NULL,
    "totalMsMedian" REAL NOT NULL,
    "totalMsMean" REAL NOT NULL,
    "totalMsStd" REAL NOT NULL,
    "tokensPerSecMedian" REAL NOT NULL,
    "tokensPerSecMean" REAL NOT NULL,
    "peakMemBytes" REAL NOT NULL,
    "kvCacheBytes" REAL,
    "weightsBytes" REAL,
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
    "startedAt" DATETIME,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "Run_jobId_fkey" FOREIGN KEY ("jobId") REFERENCES "Job" ("id") ON DELETE SET NULL ON UPDATE CASCADE,
    CONSTRAINT "Run_experimentId_fkey" FOREIGN KEY ("experimentId") REFERENCES "Experiment" ("id") ON DELETE CASCADE ON UPDATE CASCADE
);

-- CreateTable
CREATE TABLE "ChatSession" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "title" TEXT NOT NULL,
    "settings" JSONB NOT NULL,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" DATETIME NOT NULL
);

-- CreateTable
CREATE TABLE "ChatMessage" (
    "id" TEXT NOT NULL PRIMARY KEY,
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
    "prefillMs" REAL,
    "tokensPerSec" REAL,
    "tpotMs" REAL,
    "newTokens" INTEGER,
    "stoppedBy" TEXT,
    "error" TEXT,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "ChatMessage_sessionId_fkey" FOREIGN KEY ("sessionId") REFERENCES "ChatSession" ("id") ON DELETE CASCADE ON UPDATE CASCADE
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

