'use client';
// A chart with its title, units, caption and downloads (PNG, SVG, and the plotted data as CSV).
import { type ReactNode, useRef, useState } from 'react';
import { type CsvValue, toCsv } from '@/lib/csv';
import { downloadBlob, downloadText, serializeChartSvg, slug, svgToPng } from './download';

export interface ChartData {
  header: string[];
  rows: CsvValue[][];
}

type DownloadKind = 'png' | 'svg' | 'csv';
const DOWNLOADS: readonly { kind: DownloadKind; title: string; ariaLabel: (chart: string) => string }[] = [
  { kind: 'png', title: 'Download as PNG', ariaLabel: (c) => `Download ${c} as PNG` },
  { kind: 'svg', title: 'Download as SVG', ariaLabel: (c) => `Download ${c} as SVG` },
  { kind: 'csv', title: 'Download the plotted data as CSV', ariaLabel: (c) => `Download the data of ${c} as CSV` },
];

export function ChartCard(props: {
  title: string;
  caption?: ReactNode;
  data: ChartData;
  empty?: string | null;
  height?: number;
  children: ReactNode;
  testId?: string;
  /** Inputs that choose what the chart draws (e.g. which run), shown between the title and the chart. */
  controls?: ReactNode;
}) {
  const ref = useRef<HTMLDivElement>(null);
  const [error, setError] = useState<string | null>(null);
  const name = slug(props.title);

  function svgElement(): SVGSVGElement | null {
    // recharts renders its legend icons as small SVGs too: the chart surface is the largest one.
    const all = Array.from(ref.current?.querySelectorAll('svg.recharts-surface') ?? []) as SVGSVGElement[];
    return all.sort((a, b) => b.getBoundingClientRect().width - a.getBoundingClientRect().width)[0] ?? null;
  }

  async function save(kind: DownloadKind) {
    setError(null);
    try {
      if (kind === 'csv') {
        downloadText(toCsv(props.data.header, props.data.rows), `${name}.csv`, 'text/csv');
        return;
      }
      const svg = svgElement();
      if (!svg) throw new Error('nothing is drawn yet');
      const { text, width, height } = serializeChartSvg(svg);
      if (kind === 'svg') downloadText(text, `${name}.svg`, 'image/svg+xml');
      else downloadBlob(await svgToPng(text, width, height), `${name}.png`);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }

  const isEmpty = props.empty != null;
  return (
    <section className="chart-card" aria-label={props.title} data-testid={props.testId}>
      <header>
        <h3>{props.title}</h3>
        {!isEmpty && (
          <div className="actions">
            {DOWNLOADS.map((d) => (
              <button
                key={d.kind}
                type="button"
                onClick={() => save(d.kind)}
                title={d.title}
                aria-label={d.ariaLabel(props.title)}
              >
                {d.kind.toUpperCase()}
              </button>
            ))}
          </div>
        )}
      </header>
      {props.controls && <div className="row small">{props.controls}</div>}
      {isEmpty ? (
        <p className="empty">{props.empty}</p>
      ) : (
        <div ref={ref} style={{ width: '100%', height: props.height ?? 300 }}>
          {props.children}
        </div>
      )}
      {error && (
        <p className="error small" role="alert">
          {error}
        </p>
      )}
      {props.caption && <div className="caption">{props.caption}</div>}
    </section>
  );
}
