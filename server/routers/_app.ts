// The root router: every domain's router, mounted once. The browser reaches it over HTTP + SSE at /api/trpc, agents
// over the WebSocket at /api/agent-ws (server.ts). Components take their types from here (RouterOutputs).
import type { inferRouterInputs, inferRouterOutputs } from '@trpc/server';
import { router } from '../trpc';
import { agentRouter } from './agent';
import { agentsRouter } from './agents';
import { chatRouter } from './chat';
import { compareRouter } from './compare';
import { experimentsRouter } from './experiments';
import { jobsRouter } from './jobs';
import { runsRouter } from './runs';

export const appRouter = router({
  experiments: experimentsRouter,
  jobs: jobsRouter,
  runs: runsRouter,
  compare: compareRouter,
  agents: agentsRouter,
  chat: chatRouter,
  agent: agentRouter,
});

export type AppRouter = typeof appRouter;
export type RouterInputs = inferRouterInputs<AppRouter>;
export type RouterOutputs = inferRouterOutputs<AppRouter>;
