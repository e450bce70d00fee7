import type { Metadata } from 'next';
import { Suspense } from 'react';
import { ChatView } from './ChatView';

export const metadata: Metadata = { title: 'Chat' };

export default function ChatPage() {
  return (
    <>
      <div className="page-head">
        <div>
          <h1>Chat playground</h1>
          <p>
            Talk to a model through an agent and see what each method costs: every answer shows its method, TTFT and
            tokens/s.
          </p>
        </div>
      </div>
      <Suspense fallback={<p className="muted">Loading…</p>}>
        <ChatView />
      </Suspense>
    </>
  );
}
