// A separate process of racing agents for queue-semantics.test.ts: argv = database URL, agents JSON. It leases and
// completes (or hands back) until the queue is empty, then prints its claims as JSON on stdout.
import { createClient } from '../../server/db';
import { providerOf } from '../../server/migrate';
import type { AgentCapabilities } from '../../server/queue/queue';
import { resultFor, testQueue } from './fixtures';

async function main() {
  const [url, agentsJson] = process.argv.slice(2);
  const agents = JSON.parse(agentsJson) as AgentCapabilities[];
  const { client } = createClient(url);
  const { queue } = testQueue(client, providerOf(url));
  const claims: { agent: string; jobId: string; attempt: number }[] = [];
  try {
    await Promise.all(
      agents.map(async (agent) => {
        for (;;) {
          const l = await queue.lease(agent);
          if (!l) return;
          claims.push({ agent: agent.name, jobId: l.jobId, attempt: l.attempt });
          // Every other first attempt is handed back, so attempts are raced too, not only jobs.
          if (l.attempt === 1 && claims.length % 2 === 0) await queue.giveBack(agent.id, { ...l, reason: 'race test' });
          else await queue.complete(agent.id, { ...l, result: resultFor(l.config, agent.name) });
        }
      }),
    );
  } finally {
    await client.$disconnect();
  }
  process.stdout.write(JSON.stringify(claims));
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
