// Summaries of a run's repeats: the figures a comparison reads (median first; mean/std/p90 for spread). They are
// computed by lib/stats.ts, the one implementation the bench import and the dashboard use too.
export { summarize, summarizeRepeats } from '../lib/stats';
