import type { Metadata } from 'next';
import { Suspense } from 'react';
import { ExperimentBuilder } from './ExperimentBuilder';

export const metadata: Metadata = { title: 'Experiments' };

export default function ExperimentsPage() {
  return (
    <>
      <div className="page-head">
        <div>
          <h1>Experiments</h1>
          <p>
            Design a sweep or start from one of the study’s experiments. Each configuration becomes one job in the
            queue.
          </p>
        </div>
      </div>
      <Suspense fallback={<p className="muted">Loading…</p>}>
        <ExperimentBuilder />
      </Suspense>
    </>
  );
}
