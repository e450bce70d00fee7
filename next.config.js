// Next.js runs inside flashlab's own server (server.ts), which also serves /api/trpc, /api/health and the agents'
// WebSocket. Server-only packages with native parts or wasm stay outside Next's bundles.
/** @type {import('next').NextConfig} */
const config = {
  reactStrictMode: true,
  poweredByHeader: false,
  serverExternalPackages: [
    '@prisma/client',
    '@prisma/adapter-better-sqlite3',
    '@prisma/adapter-pg',
    'better-sqlite3',
    'pg',
    'ws',
  ],
};

export default config;
