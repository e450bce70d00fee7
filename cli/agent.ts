// `flashlab agent --url ws://host:3000 --token T [--name N] [--max-jobs 1]`: join a dashboard and run its work.
import os from 'node:os';
import { parseArgs } from 'node:util';
import { Agent } from '../agent/agent';
import { stderrLogger } from '../agent/log';
import { handleSignals } from '../agent/shutdown';

const HELP = `usage: flashlab agent --url URL --token TOKEN [options]

Connects to a flashlab dashboard, announces this machine, and runs the benchmark jobs and chat requests it is sent.

  --url URL            the dashboard, e.g. ws://gpu-lab:3000 or http://127.0.0.1:3000 (env FLASHLAB_URL)
  --token TOKEN        an agent token created in the dashboard (env FLASHLAB_AGENT_TOKEN)
  --name NAME          how the dashboard shows this agent (default: the host name)
  --max-jobs N         jobs run at the same time (default 1: concurrent jobs disturb each other's timings)
  --poll-ms MS         lease poll when no work notice arrives (default 10000)
  --grace-ms MS        on SIGTERM, how long running jobs may take before they are handed back (default 30000)

SIGTERM or Ctrl-C: stop taking work, finish or hand back what runs, exit. A second one: hand back and exit now.`;

function positiveInt(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, got '${value}'`);
  return n;
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      url: { type: 'string' },
      token: { type: 'string' },
      name: { type: 'string' },
      'max-jobs': { type: 'string' },
      'poll-ms': { type: 'string' },
      'grace-ms': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const url = values.url ?? process.env.FLASHLAB_URL;
  const token = values.token ?? process.env.FLASHLAB_AGENT_TOKEN;
  if (!url) throw new Error('--url is required (the dashboard, e.g. ws://127.0.0.1:3000)');
  if (!token) throw new Error('--token is required (create an agent token in the dashboard)');
  const name = values.name ?? os.hostname();
  if (!name.trim() || name.length > 100) throw new Error('--name must be 1 to 100 characters');

  const logger = stderrLogger('agent');
  const agent = await Agent.start({
    url,
    token,
    name,
    maxJobs: positiveInt(values['max-jobs'], '--max-jobs', 1),
    pollMs: positiveInt(values['poll-ms'] ?? process.env.FLASHLAB_AGENT_POLL_MS, '--poll-ms', 10_000),
    shutdownGraceMs: positiveInt(values['grace-ms'], '--grace-ms', 30_000),
    logger,
  });
  const release = handleSignals(agent, (text) => logger.log('info', text));
  const code = await agent.exited;
  release();
  logger.log('info', `exiting (${code})`);
  // Whatever still holds the event loop (a native worker thread, a half-closed socket) must not keep a
  // stopped agent alive; the timer itself keeps nothing alive.
  setTimeout(() => process.exit(code), 2_000).unref();
  return code;
}
