// `flashlab <command>`: one entry point, one module per command, loaded only when asked for.
const commands: Record<string, { summary: string; load: () => Promise<{ main: (argv: string[]) => Promise<number> }> }> = {
  generate: { summary: 'run the engine once: prompt in, tokens and figures out', load: () => import('./generate') },
  agent: { summary: 'connect to a dashboard and run its jobs and chats', load: () => import('./agent') },
  run: { summary: 'run an experiment plan offline: flashlab run plan.json --out results.json', load: () => import('./run') },
  import: { summary: 'put an offline results file or an engine bench bundle into the history', load: () => import('./import') },
};

function usage(): string {
  const rows = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`);
  return ['usage: flashlab <command> [options]', '', 'commands:', ...rows, '', "'flashlab <command> --help' for a command's options."].join('\n');
}

async function main(): Promise<number> {
  const [name, ...rest] = process.argv.slice(2);
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(`${usage()}\n`);
    return name ? 0 : 2;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`flashlab: unknown command '${name}'\n\n${usage()}\n`);
    return 2;
  }
  const mod = await command.load();
  return mod.main(rest);
}

main().then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    process.stderr.write(`flashlab: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
