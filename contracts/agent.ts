// The agent protocol: what an agent says to the dashboard and hears back, over tRPC on a WebSocket.
// The server's agent router implements exactly these procedures (inputs validated by these schemas):
//   agent.hello     mutation  AgentHello            -> { agentId, leaseMs, renewEveryMs }
//   agent.lease     mutation  {}                    -> { job: LeasedJob | null }   (only jobs this agent can run)
//   agent.renew     mutation  JobAttemptRef         -> { leaseExpiresAt, cancelRequested }  (stale attempt -> error)
//   agent.progress  mutation  JobProgress           -> { ok: true }
//   agent.log       mutation  JobLog                -> { ok: true }
//   agent.complete  mutation  JobComplete           -> { ok: true }   results + job end in one transaction
//   agent.fail      mutation  JobFail               -> { ok: true }
//   agent.giveBack  mutation  JobGiveBack           -> { ok: true }   requeued without counting an attempt
//   agent.events    subscription {}                 -> AgentEvent stream (work available, cancel, chat requests)
//   agent.chatDelta mutation  ChatDelta             -> { ok: true }
//   agent.chatEnd   mutation  ChatEnd               -> { ok: true }
// The agent authenticates with `connectionParams: { token }`; a revoked token closes the socket.
import { z } from 'zod';
import { AttentionMethod, DeviceKind, Dtype, Sampling } from './engine';
import { GpuInfo, JobConfig, RunResult, WeightsSpec } from './experiment';
import { KnownModelName } from './models';

export const AgentInventory = z.object({
  name: z.string().min(1).max(100),
  hostname: z.string(),
  backend: DeviceKind,
  cpu: z.object({ model: z.string(), cores: z.number().int().positive() }),
  memoryBytes: z.number(),
  gpus: z.array(GpuInfo),
  engine: z.object({ version: z.string(), build: z.string(), backends: z.array(DeviceKind) }),
  nodeVersion: z.string(),
  agentVersion: z.string(),
});
export type AgentInventory = z.infer<typeof AgentInventory>;

export const AgentHello = z.object({ inventory: AgentInventory });

export const JobAttemptRef = z.object({ jobId: z.string().min(1), attempt: z.number().int().min(1) });
export type JobAttemptRef = z.infer<typeof JobAttemptRef>;

export const LeasedJob = JobAttemptRef.extend({
  experimentId: z.string(),
  config: JobConfig,
  leaseExpiresAt: z.string(),
});
export type LeasedJob = z.infer<typeof LeasedJob>;

export const JobProgress = JobAttemptRef.extend({
  progress: z.number().min(0).max(1),
  message: z.string().max(500).optional(),
});
export const LogLine = z.object({
  ts: z.string(),
  level: z.enum(['debug', 'info', 'warn', 'error']),
  text: z.string().max(4000),
});
export type LogLine = z.infer<typeof LogLine>;
export const JobLog = JobAttemptRef.extend({ lines: z.array(LogLine).min(1).max(500) });
export const JobComplete = JobAttemptRef.extend({ result: RunResult });
export const JobFail = JobAttemptRef.extend({ error: z.string().min(1).max(10000), retryable: z.boolean().default(false) });
export const JobGiveBack = JobAttemptRef.extend({ reason: z.string().max(500) });

export const ChatMessage = z.object({ role: z.enum(['system', 'user', 'assistant']), content: z.string().max(100_000) });
export type ChatMessage = z.infer<typeof ChatMessage>;

/** One chat answer to produce: the method it runs with is part of the request. */
export const ChatRequest = z.object({
  requestId: z.string().min(1),
  model: KnownModelName,
  weights: WeightsSpec,
  attention: AttentionMethod,
  kvCache: z.boolean(),
  tp: z.number().int().min(1).max(8),
  dtype: Dtype,
  device: DeviceKind,
  sampling: Sampling,
  maxNewTokens: z.number().int().min(1).max(4096),
  messages: z.array(ChatMessage).min(1),
});
export type ChatRequest = z.infer<typeof ChatRequest>;

export const ChatDelta = z.object({
  requestId: z.string().min(1),
  tokenIds: z.array(z.number().int()),
  text: z.string(),
});
export type ChatDelta = z.infer<typeof ChatDelta>;

export const ChatEnd = z.object({
  requestId: z.string().min(1),
  ok: z.boolean(),
  error: z.string().optional(),
  stoppedBy: z.enum(['eos', 'maxTokens', 'cancelled', 'error']),
  prefillMs: z.number().optional(),
  tokensPerSec: z.number().optional(),
  tpotMs: z.number().optional(),
  newTokens: z.number().int().optional(),
});
export type ChatEnd = z.infer<typeof ChatEnd>;

export const AgentEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('work-available') }),
  z.object({ type: z.literal('cancel'), jobId: z.string(), attempt: z.number().int() }),
  z.object({ type: z.literal('chat'), request: ChatRequest }),
  z.object({ type: z.literal('chat-cancel'), requestId: z.string() }),
]);
export type AgentEvent = z.infer<typeof AgentEvent>;

/** WebSocket close codes the dashboard uses on an agent's socket (4000–4999 are for applications); an agent
 *  that sees one of them stops instead of reconnecting, since its token will not be accepted again. */
export const AGENT_CLOSE_CODES = { revoked: 4001, unauthorized: 4003 } as const;
