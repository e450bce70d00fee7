// The server's environment, parsed once with zod. A missing or malformed variable stops the start with a message
// that names it; nothing else in server/ reads process.env.
import { z } from 'zod';
import { DEFAULT_SQLITE_URL, providerOf } from './migrate';

const onOff = z
  .enum(['1', '0', 'true', 'false', 'on', 'off', 'yes', 'no'])
  .transform((v) => v === '1' || v === 'true' || v === 'on' || v === 'yes');

const EnvSchema = z.object({
  DATABASE_URL: z
    .string()
    .min(1)
    .default(DEFAULT_SQLITE_URL)
    .superRefine((url, ctx) => {
      try {
        providerOf(url);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
      }
    }),
  PORT: z.coerce.number().int().min(0).max(65535).default(3000),
  HOST: z.string().min(1).default('127.0.0.1'),
  /** When set, browser writes need `Authorization: Bearer <token>` (or the flashlab_admin cookie). */
  FLASHLAB_ADMIN_TOKEN: z.string().min(8, 'must be at least 8 characters').optional(),
  FLASHLAB_EMBEDDED_AGENT: onOff.default(false),
  /** How long a lease lasts without renewal; agents renew at a third of it. */
  LEASE_MS: z.coerce.number().int().min(1000).max(3_600_000).default(60_000),
  MAX_ATTEMPTS: z.coerce.number().int().min(1).max(100).default(3),
  SWEEP_EVERY_MS: z.coerce.number().int().min(100).max(600_000).default(5_000),
  NODE_ENV: z.enum(['development', 'production', 'test']).default('production'),
});
export type ServerEnv = z.infer<typeof EnvSchema>;

/** Parses an environment; throws one Error listing every bad variable by name. */
export function parseEnv(source: Record<string, string | undefined> = process.env): ServerEnv {
  // Empty strings mean "unset" (a common shell habit: FOO= cmd).
  const cleaned = Object.fromEntries(Object.entries(source).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = EnvSchema.safeParse(cleaned);
  if (parsed.success) return parsed.data;
  const lines = parsed.error.issues.map((i) => `  ${i.path.join('.') || '(environment)'}: ${i.message}`);
  throw new Error(`invalid environment:\n${lines.join('\n')}`);
}

const g = globalThis as typeof globalThis & { __flashlabEnv?: ServerEnv };

/** The process's environment, parsed on first use. */
export function env(): ServerEnv {
  g.__flashlabEnv ??= parseEnv();
  return g.__flashlabEnv;
}

/** Tests and server.ts set the parsed environment explicitly. */
export function setEnv(e: ServerEnv): void {
  g.__flashlabEnv = e;
}
