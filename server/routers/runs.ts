// The run history: filter, sort, paginate and group in the database; tags and notes; export; import a results file.
import { TRPCError } from '@trpc/server';
import { z } from 'zod';
import { OfflineResults } from '../../contracts/experiment';
import { GROUP_SORTABLE } from '../../lib/run-history';
import { benchBundleToImport, isBenchBundle } from '../bench-import';
import type { Db, PrismaNs } from '../db';
import { runRow, tagList } from '../queue/run-row';
import { adminProcedure, publicProcedure, router } from '../trpc';
import { CONFIG_FIELDS, configOf, runBaseSelect, storedEnvironment, storedRepeats, tagWhere } from './selects';

const csvOrList = <T extends z.ZodTypeAny>(t: T) => z.array(t).max(50).optional();
// Stored joined by commas in tagList, so a tag cannot hold one.
const TagList = z
  .array(
    z
      .string()
      .trim()
      .min(1)
      .max(50)
      .regex(/^[^,]+$/, 'a tag cannot contain a comma'),
  )
  .max(20)
  .optional();

export const RunFilter = z
  .object({
    model: csvOrList(z.string().min(1)),
    attention: csvOrList(z.enum(['naive', 'fa1', 'fa2'])),
    kvCache: z.boolean().optional(),
    tp: csvOrList(z.number().int().min(1).max(8)),
    dtype: csvOrList(z.enum(['fp32', 'fp16', 'bf16'])),
    device: z.enum(['cpu', 'cuda']).optional(),
    agentName: csvOrList(z.string().min(1)),
    gpuName: csvOrList(z.string().min(1)),
    tag: z.string().min(1).max(50).optional(),
    experimentId: z.string().min(1).optional(),
    ids: z.array(z.string().min(1)).max(1000).optional(),
    from: z.coerce.date().optional(),
    to: z.coerce.date().optional(),
    source: z.enum(['online', 'import']).optional(),
  })
  .default({});
export type RunFilter = z.infer<typeof RunFilter>;

/** Figures a table can sort by: each is an indexed column (or a cheap one) of Run. */
export const SORTABLE = [
  'createdAt',
  'model',
  'attention',
  'tp',
  'batchSize',
  'promptLength',
  'newTokens',
  'prefillMsMedian',
  'tpotMsMedian',
  'totalMsMedian',
  'tokensPerSecMedian',
  'peakMemBytes',
  'agentName',
  'gpuName',
] as const;
const Sort = z
  .object({ field: z.enum(SORTABLE).default('createdAt'), dir: z.enum(['asc', 'desc']).default('desc') })
  .default({ field: 'createdAt', dir: 'desc' });

/** The table's order, ties broken by id so that pages and the export list the same runs in the same order. */
function runOrder(sort: z.infer<typeof Sort>): PrismaNs.RunOrderByWithRelationInput[] {
  return [{ [sort.field]: sort.dir }, { id: 'asc' }];
}

export function runWhere(f: RunFilter): PrismaNs.RunWhereInput {
  const and: PrismaNs.RunWhereInput[] = [];
  if (f.model?.length) and.push({ model: { in: f.model } });
  if (f.attention?.length) and.push({ attention: { in: f.attention } });
  if (f.kvCache !== undefined) and.push({ kvCache: f.kvCache });
  if (f.tp?.length) and.push({ tp: { in: f.tp } });
  if (f.dtype?.length) and.push({ dtype: { in: f.dtype } });
  if (f.device) and.push({ device: f.device });
  if (f.agentName?.length) and.push({ agentName: { in: f.agentName } });
  if (f.gpuName?.length) and.push({ gpuName: { in: f.gpuName } });
  if (f.tag) and.push(tagWhere(f.tag));
  if (f.experimentId) and.push({ experimentId: f.experimentId });
  if (f.ids?.length) and.push({ id: { in: f.ids } });
  if (f.from) and.push({ createdAt: { gte: f.from } });
  if (f.to) and.push({ createdAt: { lte: f.to } });
  if (f.source) and.push({ source: f.source });
  return and.length ? { AND: and } : {};
}

const listSelect = {
  ...runBaseSelect,
  jobId: true,
  attempt: true,
  weightsKind: true,
  warmup: true,
  repeatCount: true,
  configKey: true,
  prefillMsMedian: true,
  prefillMsStd: true,
  tpotMsMedian: true,
  tpotMsStd: true,
  totalMsMedian: true,
  totalMsStd: true,
  tokensPerSecMedian: true,
  kvCacheBytes: true,
  tags: true,
  notes: true,
  source: true,
  experiment: { select: { name: true } },
} as const satisfies PrismaNs.RunSelect;

function tagsOf(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((t): t is string => typeof t === 'string') : [];
}

/** Pools the repeats of runs of one configuration: the mean and sample std over every repeat, from each run's
 *  repeat count, mean and std (exact: the within-run and between-run sums of squares add up). */
export function pooledMeanStd(parts: readonly { n: number; mean: number; std: number }[]): {
  n: number;
  mean: number;
  std: number;
} {
  const n = parts.reduce((s, p) => s + p.n, 0);
  if (n === 0) return { n: 0, mean: Number.NaN, std: Number.NaN };
  const m = parts.reduce((s, p) => s + p.n * p.mean, 0) / n;
  const ss = parts.reduce((s, p) => s + (p.n - 1) * p.std * p.std + p.n * (p.mean - m) ** 2, 0);
  return { n, mean: m, std: n > 1 ? Math.sqrt(Math.max(0, ss) / (n - 1)) : 0 };
}

async function groups(
  client: Db,
  filter: RunFilter,
  sort: { field: (typeof GROUP_SORTABLE)[number]; dir: 'asc' | 'desc' },
  page: number,
  pageSize: number,
) {
  const where = runWhere(filter);
  const by = ['configKey', ...CONFIG_FIELDS] as const;
  const orderBy: PrismaNs.RunOrderByWithAggregationInput =
    sort.field === 'lastAt'
      ? { _max: { createdAt: sort.dir } }
      : sort.field === 'count'
        ? { _count: { id: sort.dir } }
        : sort.field === 'model' || sort.field === 'promptLength' || sort.field === 'batchSize'
          ? { [sort.field]: sort.dir }
          : sort.field === 'peakMemBytes'
            ? { _max: { peakMemBytes: sort.dir } }
            : { _avg: { [`${sort.field}Mean`]: sort.dir } };
  // Prisma's groupBy typing cannot follow an orderBy chosen at run time; the row shape is stated here instead.
  type GroupRow = Pick<PrismaNs.RunGroupByOutputType, (typeof by)[number]> & {
    _count: { id: number };
    _sum: { repeatCount: number | null };
    _max: { createdAt: Date | null; peakMemBytes: number | null };
    _avg: { tokensPerSecMean: number | null };
  };
  const groupBy = client.run.groupBy as unknown as (args: object) => Promise<GroupRow[]>;
  const [totalGroups, page_] = await Promise.all([
    client.run.groupBy({ by: ['configKey'], where, _count: { id: true } }).then((g) => g.length),
    groupBy({
      by: [...by],
      where,
      orderBy: [orderBy, { configKey: 'asc' }],
      skip: page * pageSize,
      take: pageSize,
      _count: { id: true },
      _sum: { repeatCount: true },
      _max: { createdAt: true, peakMemBytes: true },
      _avg: { tokensPerSecMean: true },
    }),
  ]);
  // The page's members: at most pageSize groups, so pooling their repeats here touches only what is shown.
  const members = page_.length
    ? await client.run.findMany({
        where: { AND: [where, { configKey: { in: page_.map((g) => g.configKey) } }] },
        select: {
          id: true,
          configKey: true,
          repeatCount: true,
          prefillMsMean: true,
          prefillMsStd: true,
          tpotMsMean: true,
          tpotMsStd: true,
          totalMsMean: true,
          totalMsStd: true,
          agentName: true,
          gpuName: true,
        },
        orderBy: { createdAt: 'asc' },
      })
    : [];
  const byKey = new Map<string, typeof members>();
  for (const m of members) byKey.set(m.configKey, [...(byKey.get(m.configKey) ?? []), m]);
  const items = page_.map((g) => {
    const ms = byKey.get(g.configKey) ?? [];
    const pool = (k: 'prefillMs' | 'tpotMs' | 'totalMs') =>
      pooledMeanStd(ms.map((m) => ({ n: m.repeatCount, mean: m[`${k}Mean`], std: m[`${k}Std`] })));
    return {
      configKey: g.configKey,
      config: configOf(g),
      runCount: g._count.id,
      repeatCount: g._sum.repeatCount ?? 0,
      lastAt: g._max.createdAt,
      peakMemBytes: g._max.peakMemBytes,
      tokensPerSecMean: g._avg.tokensPerSecMean,
      prefillMs: pool('prefillMs'),
      tpotMs: pool('tpotMs'),
      totalMs: pool('totalMs'),
      runIds: ms.map((m) => m.id),
      agents: [...new Set(ms.map((m) => m.agentName))],
      gpus: [...new Set(ms.map((m) => m.gpuName).filter((x): x is string => x != null))],
    };
  });
  // Sorting by a pooled figure: the database ordered by the mean of run means; the pooled mean weighs by repeat
  // count, which can swap neighbours — order the page by what is shown.
  if (['totalMs', 'prefillMs', 'tpotMs'].includes(sort.field)) {
    const k = sort.field as 'totalMs' | 'prefillMs' | 'tpotMs';
    items.sort((a, b) => (sort.dir === 'asc' ? 1 : -1) * (a[k].mean - b[k].mean));
  }
  return { total: totalGroups, items };
}

const ExportRow = {
  header: [
    'id',
    'experiment',
    'model',
    'weights',
    'attention',
    'kvCache',
    'tp',
    'dtype',
    'device',
    'batchSize',
    'promptLength',
    'newTokens',
    'warmup',
    'repeats',
    'prefillMsMedian',
    'prefillMsStd',
    'tpotMsMedian',
    'tpotMsStd',
    'totalMsMedian',
    'totalMsStd',
    'tokensPerSecMedian',
    'peakMemBytes',
    'kvCacheBytes',
    'agent',
    'gpu',
    'engineBuild',
    'tags',
    'notes',
    'source',
    'createdAt',
  ],
} as const;

/** An engine bench bundle: converted and validated whole before anything is written. */
async function importBenchBundle(client: Db, json: unknown, fileName: string | undefined) {
  const file = fileName ?? 'the bundle';
  let converted: ReturnType<typeof benchBundleToImport>;
  let rows: { experiment: number; data: ReturnType<typeof runRow> }[];
  try {
    converted = benchBundleToImport(json, file);
    rows = converted.experiments.flatMap((e, k) =>
      e.runs.map((run) => ({
        experiment: k,
        data: runRow(run.result, { experimentId: '', tags: e.spec.tags, notes: run.notes, source: 'import' }),
      })),
    );
  } catch (e) {
    // A refused bundle (BenchImportError) or a figure runRow will not store: the caller's mistake, not ours.
    if (e instanceof Error) throw new TRPCError({ code: 'BAD_REQUEST', message: e.message });
    throw e;
  }
  const experimentIds = await client.$transaction(async (tx) => {
    const ids: string[] = [];
    for (const { spec } of converted.experiments) {
      const exp = await tx.experiment.create({
        data: {
          name: spec.name,
          spec,
          model: spec.model,
          device: spec.device,
          targetAgent: null,
          tags: spec.tags,
          tagList: tagList(spec.tags),
          notes: spec.notes,
          source: 'import',
          createdBy: fileName ? `import:${fileName}` : 'import',
        },
      });
      ids.push(exp.id);
    }
    for (const row of rows)
      await tx.run.create({
        data: { ...row.data, experimentId: ids[row.experiment] } as PrismaNs.RunUncheckedCreateInput,
      });
    return ids;
  });
  return {
    experimentId: experimentIds[0],
    experimentIds,
    experimentNames: converted.experiments.map((e) => e.spec.name),
    runs: rows.length,
    failures: 0,
    bundle: { kind: converted.kind, card: converted.card, partial: converted.partial },
    skipped: converted.skipped,
    targets: converted.targets,
  };
}

export const runsRouter = router({
  list: publicProcedure
    .input(
      z.object({
        filter: RunFilter,
        sort: Sort,
        page: z.number().int().min(0).default(0),
        pageSize: z.number().int().min(1).max(200).default(50),
      }),
    )
    .query(async ({ ctx, input }) => {
      const client = ctx.db;
      const where = runWhere(input.filter);
      const [total, rows] = await Promise.all([
        client.run.count({ where }),
        client.run.findMany({
          where,
          select: listSelect,
          orderBy: runOrder(input.sort),
          skip: input.page * input.pageSize,
          take: input.pageSize,
        }),
      ]);
      return { total, items: rows.map((r) => ({ ...r, tags: tagsOf(r.tags), experimentName: r.experiment.name })) };
    }),

  /** Repeats of one configuration grouped, with mean ± std over every repeat. */
  groups: publicProcedure
    .input(
      z.object({
        filter: RunFilter,
        sort: z
          .object({ field: z.enum(GROUP_SORTABLE).default('lastAt'), dir: z.enum(['asc', 'desc']).default('desc') })
          .default({ field: 'lastAt', dir: 'desc' }),
        page: z.number().int().min(0).default(0),
        pageSize: z.number().int().min(1).max(100).default(25),
      }),
    )
    .query(({ ctx, input }) => groups(ctx.db, input.filter, input.sort, input.page, input.pageSize)),

  /** Values the filters offer, from what is stored. */
  facets: publicProcedure.query(async ({ ctx }) => {
    const client = ctx.db;
    const groupBy = client.run.groupBy as unknown as (args: object) => Promise<Record<string, string | null>[]>;
    const distinct = async (k: 'model' | 'agentName' | 'gpuName' | 'attention' | 'dtype') =>
      (await groupBy({ by: [k], orderBy: { [k]: 'asc' } })).map((r) => r[k]).filter((v): v is string => v != null);
    const [model, agentName, gpuName, attention, dtype, tagRows, tpRows] = await Promise.all([
      distinct('model'),
      distinct('agentName'),
      distinct('gpuName'),
      distinct('attention'),
      distinct('dtype'),
      client.run.groupBy({ by: ['tagList'] }),
      client.run.groupBy({ by: ['tp'], orderBy: { tp: 'asc' } }),
    ]);
    const tags = [...new Set(tagRows.flatMap((r) => r.tagList.split(',').filter(Boolean)))].sort();
    return { model, agentName, gpuName, attention, dtype, tags, tp: tpRows.map((r) => r.tp) };
  }),

  get: publicProcedure.input(z.object({ id: z.string().min(1) })).query(async ({ ctx, input }) => {
    const run = await ctx.db.run.findUnique({
      where: { id: input.id },
      include: { experiment: { select: { name: true, spec: true } } },
    });
    if (!run) throw new TRPCError({ code: 'NOT_FOUND', message: `run ${input.id} does not exist` });
    return {
      ...run,
      tags: tagsOf(run.tags),
      repeats: storedRepeats(run.repeats),
      environment: storedEnvironment(run.environment),
    };
  }),

  /** Tags and notes of one run or many (the selection in the history table). */
  annotate: adminProcedure
    .input(
      z.object({
        ids: z.array(z.string().min(1)).min(1).max(1000),
        tags: TagList,
        addTags: TagList,
        notes: z.string().max(5000).optional(),
      }),
    )
    .mutation(async ({ ctx, input }) => {
      const client = ctx.db;
      const found = await client.run.findMany({ where: { id: { in: input.ids } }, select: { id: true, tags: true } });
      if (found.length !== new Set(input.ids).size) {
        const missing = input.ids.filter((id) => !found.some((f) => f.id === id));
        throw new TRPCError({ code: 'NOT_FOUND', message: `no run with id ${missing.slice(0, 3).join(', ')}` });
      }
      await client.$transaction(
        found.map((r) => {
          let tags = input.tags ?? tagsOf(r.tags);
          if (input.addTags) tags = [...new Set([...tags, ...input.addTags])];
          return client.run.update({
            where: { id: r.id },
            data: { tags, tagList: tagList(tags), ...(input.notes !== undefined ? { notes: input.notes } : {}) },
          });
        }),
      );
      return { updated: found.length };
    }),

  /** Every matching run (up to 20 000) as rows for CSV, or as full records for JSON. */
  export: publicProcedure
    .input(z.object({ filter: RunFilter, sort: Sort, format: z.enum(['csv', 'json']) }))
    .query(async ({ ctx, input }) => {
      const client = ctx.db;
      const where = runWhere(input.filter);
      const limit = 20_000;
      const total = await client.run.count({ where });
      if (input.format === 'json') {
        const runs = await client.run.findMany({
          where,
          orderBy: runOrder(input.sort),
          take: limit,
        });
        return {
          format: 'json' as const,
          total,
          truncated: total > limit,
          runs: runs.map((r) => ({ ...r, tags: tagsOf(r.tags) })),
          header: [] as string[],
          rows: [] as (string | number | boolean | null)[][],
        };
      }
      const runs = await client.run.findMany({
        where,
        select: listSelect,
        orderBy: runOrder(input.sort),
        take: limit,
      });
      const rows = runs.map((r) => [
        r.id,
        r.experiment.name,
        r.model,
        r.weightsKind,
        r.attention,
        r.kvCache,
        r.tp,
        r.dtype,
        r.device,
        r.batchSize,
        r.promptLength,
        r.newTokens,
        r.warmup,
        r.repeatCount,
        r.prefillMsMedian,
        r.prefillMsStd,
        r.tpotMsMedian,
        r.tpotMsStd,
        r.totalMsMedian,
        r.totalMsStd,
        r.tokensPerSecMedian,
        r.peakMemBytes,
        r.kvCacheBytes,
        r.agentName,
        r.gpuName,
        r.engineBuild,
        tagsOf(r.tags).join(' '),
        r.notes,
        r.source,
        r.createdAt.toISOString(),
      ]);
      return {
        format: 'csv' as const,
        total,
        truncated: total > limit,
        header: [...ExportRow.header] as string[],
        rows,
        runs: [],
      };
    }),

  /** A results file from `flashlab run plan.json --out results.json` (one experiment and its runs), or an engine
   *  bench bundle from bench/results/ (its experiments and runs): all of it in one transaction, or nothing. */
  import: adminProcedure
    .input(z.object({ fileName: z.string().max(300).optional(), content: z.string().min(1).max(50_000_000) }))
    .mutation(async ({ ctx, input }) => {
      let json: unknown;
      try {
        json = JSON.parse(input.content);
      } catch (e) {
        throw new TRPCError({
          code: 'BAD_REQUEST',
          message: `${input.fileName ?? 'the file'} is not JSON: ${(e as Error).message}`,
        });
      }
      if (isBenchBundle(json)) return importBenchBundle(ctx.db, json, input.fileName);
      const parsed = OfflineResults.safeParse(json);
      if (!parsed.success) {
        const first = parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(file)'}: ${i.message}`);
        throw new TRPCError({
          code: 'BAD_REQUEST',
          message: `${input.fileName ?? 'the file'} is not a flashlab results file — ${first.join('; ')}`,
        });
      }
      const r = parsed.data;
      if (r.runs.length === 0) throw new TRPCError({ code: 'BAD_REQUEST', message: 'the results file has no runs' });
      let rows: ReturnType<typeof runRow>[];
      try {
        rows = r.runs.map((run) =>
          runRow(run, { experimentId: '', tags: r.experiment.tags, notes: r.experiment.notes, source: 'import' }),
        );
      } catch (e) {
        throw new TRPCError({ code: 'BAD_REQUEST', message: (e as Error).message });
      }
      const client = ctx.db;
      const experiment = await client.$transaction(async (tx) => {
        const exp = await tx.experiment.create({
          data: {
            name: r.experiment.name,
            spec: r.experiment,
            model: r.experiment.model,
            device: r.experiment.device,
            targetAgent: r.experiment.targetAgent ?? null,
            tags: r.experiment.tags,
            tagList: tagList(r.experiment.tags),
            notes: r.experiment.notes,
            source: 'import',
            createdBy: input.fileName ? `import:${input.fileName}` : 'import',
          },
        });
        for (const row of rows)
          await tx.run.create({ data: { ...row, experimentId: exp.id } as PrismaNs.RunUncheckedCreateInput });
        return exp;
      });
      return { experimentId: experiment.id, runs: rows.length, failures: r.failures.length };
    }),
});
