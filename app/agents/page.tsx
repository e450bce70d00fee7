import type { Metadata } from 'next';
import { AgentsView } from './AgentsView';

export const metadata: Metadata = { title: 'Agents & queue' };

export default function AgentsPage() {
  return (
    <>
      <div className="page-head">
        <div>
          <h1>Agents &amp; queue</h1>
          <p>Machines that run jobs, the tokens that let them join, and every job in flight — live.</p>
        </div>
      </div>
      <AgentsView />
    </>
  );
}
