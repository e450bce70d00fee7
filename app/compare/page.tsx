import type { Metadata } from 'next';
import { Suspense } from 'react';
import { CompareView } from './CompareView';

export const metadata: Metadata = { title: 'Compare' };

export default function ComparePage() {
  return (
    <>
      <div className="page-head">
        <div>
          <h1>Compare</h1>
          <p>
            Methods side by side, with the study’s published figures drawn beside ours. The view is in the URL: share
            the link.
          </p>
        </div>
      </div>
      <Suspense fallback={<p className="muted">Loading…</p>}>
        <CompareView />
      </Suspense>
    </>
  );
}
