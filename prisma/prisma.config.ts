// Prisma CLI configuration: the JavaScript schema engine over a driver adapter, so that `prisma generate` and
// `prisma migrate diff` need no native engine binary (these machines reach no download server).
// Pass it explicitly: `prisma <command> --config prisma/prisma.config.ts` (prisma/generate.ts does).
import path from 'node:path';
import { defineConfig } from 'prisma/config';

const root = path.resolve(__dirname, '..');

export default defineConfig({
  experimental: { adapter: true },
  engine: 'js',
  schema: path.join(root, 'prisma', 'schema.prisma'),
  async adapter() {
    const url = process.env.DATABASE_URL ?? '';
    if (url.startsWith('postgres')) {
      const { PrismaPg } = await import('@prisma/adapter-pg');
      return new PrismaPg({ connectionString: url });
    }
    const { PrismaBetterSQLite3 } = await import('@prisma/adapter-better-sqlite3');
    return new PrismaBetterSQLite3({ url: url || `file:${path.join(root, 'data', 'flashlab.db')}` });
  },
});
