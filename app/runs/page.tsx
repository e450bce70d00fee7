import type { Metadata } from 'next';
import { Suspense } from 'react';
import { RunHistory } from './RunHistory';

export const metadata: Metadata = { title: 'Runs' };

export default function RunsPage() {
  return (
    <>
      <div className="page-head">
        <div>
          <h1>Runs</h1>
          <p>
            Every measured configuration, from every agent and every import. Filter, sort, group repeats, pick runs to
            compare.
          </p>
        </div>
      </div>
      <Suspense fallback={<p className="muted">Loading…</p>}>
        <RunHistory />
      </Suspense>
    </>
  );
}
