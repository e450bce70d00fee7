'use client';
import Link from 'next/link';
import { usePathname } from 'next/navigation';

const LINKS = [
  { href: '/', label: 'Home' },
  { href: '/experiments', label: 'Experiments' },
  { href: '/agents', label: 'Agents' },
  { href: '/runs', label: 'Runs' },
  { href: '/compare', label: 'Compare' },
  { href: '/chat', label: 'Chat' },
] as const;

export function Nav() {
  const path = usePathname();
  return (
    <nav aria-label="Main">
      <ul className="nav">
        {LINKS.map((l) => {
          const current = l.href === '/' ? path === '/' : path === l.href || path.startsWith(`${l.href}/`);
          return (
            <li key={l.href}>
              <Link href={l.href} aria-current={current ? 'page' : undefined}>
                {l.label}
              </Link>
            </li>
          );
        })}
      </ul>
    </nav>
  );
}
