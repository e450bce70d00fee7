import type { Metadata } from 'next';
import Link from 'next/link';
import type { ReactNode } from 'react';
import { AdminToken } from './_components/AdminToken';
import { Nav } from './_components/Nav';
import { TRPCReactProvider } from './_trpc/client';
import './globals.css';

export const metadata: Metadata = {
  title: { default: 'flashlab', template: '%s · flashlab' },
  description:
    'Measure and compare naive attention, FlashAttention-1/2, KV caching and tensor parallelism on GPT-2 and ChatGLM2-6B.',
};

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body>
        <a className="skip-link" href="#main">
          Skip to content
        </a>
        <TRPCReactProvider>
          <header className="topbar">
            <Link className="brand" href="/">
              flash<span>lab</span>
            </Link>
            <Nav />
            <div className="spacer" />
            <AdminToken />
          </header>
          <main id="main">{children}</main>
        </TRPCReactProvider>
      </body>
    </html>
  );
}
