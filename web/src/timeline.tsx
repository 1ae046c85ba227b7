// A wake's waterfall (stages on one time axis shared by all rows, so rows
// compare) and the chart of wake wall time, cold and snapshot as two series.
// Each bar carries its name and milliseconds in text; cold bars are also
// striped, snapshot bars solid, and the mode is written in every row.
import type { Wake } from './api.ts';
import { clock, ms, when } from './format.ts';
import { ModeBadge } from './pages.tsx';
import { extent, reasonInWords, segments } from './stages.ts';

export function Waterfall({ w, scale }: { w: Wake; scale: number }) {
  const segs = segments(w);
  const pct = (v: number) => `${((v / scale) * 100).toFixed(3)}%`;
  const reason = reasonInWords(w.fallback_reason);
  const seq = segs.filter((s) => !s.parallel);
  const par = segs.filter((s) => s.parallel);
  return (
    <li class={`wake wake-${w.boot_mode}`} data-testid="wake" data-wake={w.id}>
      <div class="wake-head">
        <time dateTime={w.at} title={when(w.at)}>
          {when(w.at)}
        </time>
        <ModeBadge mode={w.boot_mode} />
        <span>
          wall <strong>{ms(w.wall_ms)}</strong>
        </span>
        <span>first byte {w.first_byte_ms != null ? <strong>{ms(w.first_byte_ms)}</strong> : <em title="woken through the API or dashboard: no request waited">none (no request waited)</em>}</span>
        <span class="muted">
          node {w.node ?? '—'}, seed {w.seed_source}
        </span>
      </div>
      {reason && (
        <div class="fallback" data-testid="fallback">
          <span aria-hidden="true">⚠ </span>
          {reason}{' '}
          <details>
            <summary>details</summary>
            <code>{w.fallback_reason}</code>
          </details>
        </div>
      )}
      <div class="bars" role="img" aria-label={`${w.boot_mode} wake, ${segs.map((s) => `${s.label} ${ms(s.ms)}`).join(', ')}`}>
        <div class="lane">
          {seq.map((s) => (
            <span class={`bar bar-${s.key}`} style={{ left: pct(s.start), width: pct(s.ms) }} title={`${s.label}: ${ms(s.ms)}`} />
          ))}
        </div>
        {par.map((s) => (
          <div class="lane lane-par">
            <span class={`bar bar-${s.key}`} style={{ left: pct(s.start), width: pct(s.ms) }} title={`${s.label}: ${ms(s.ms)} (from the resume)`} />
          </div>
        ))}
      </div>
      <ol class="stages" aria-label="stages">
        {segs.map((s) => (
          <li data-stage={s.key}>
            <span class={`swatch bar-${s.key}`} aria-hidden="true" />
            {s.label} {ms(s.ms)}
            {s.parallel ? ' ∥' : ''}
          </li>
        ))}
      </ol>
    </li>
  );
}

export function Timeline({ wakes }: { wakes: Wake[] }) {
  const scale = Math.max(1, ...wakes.map(extent));
  return (
    <ol class="timeline" aria-label="wakes, newest first" data-testid="timeline">
      {wakes.map((w) => (
        <Waterfall key={w.id} w={w} scale={scale} />
      ))}
    </ol>
  );
}

/** Wall time of each wake over time: snapshot as circles, cold as triangles, on one log-free linear axis. */
export function WallChart({ wakes }: { wakes: Wake[] }) {
  const W = 640;
  const H = 200;
  const pad = { l: 56, r: 12, t: 12, b: 28 };
  if (wakes.length === 0) return <p>No wakes yet.</p>;
  const pts = wakes.map((w) => ({ t: new Date(w.at).getTime(), v: w.wall_ms, mode: w.boot_mode, w }));
  const t0 = Math.min(...pts.map((p) => p.t));
  const t1 = Math.max(...pts.map((p) => p.t));
  const vmax = Math.max(...pts.map((p) => p.v)) * 1.1 || 1;
  const x = (t: number) => pad.l + (t1 === t0 ? (W - pad.l - pad.r) / 2 : ((t - t0) / (t1 - t0)) * (W - pad.l - pad.r));
  const y = (v: number) => H - pad.b - (v / vmax) * (H - pad.t - pad.b);
  const series = (mode: 'snapshot' | 'cold') => pts.filter((p) => p.mode === mode).sort((a, b) => a.t - b.t);
  const snap = series('snapshot');
  const cold = series('cold');
  const med = (a: typeof pts) => (a.length ? [...a].sort((p, q) => p.v - q.v)[Math.floor(a.length / 2)]!.v : null);
  const summary = `Wake wall time: ${snap.length} snapshot wakes${snap.length ? `, median ${ms(med(snap))}` : ''}; ${cold.length} cold wakes${cold.length ? `, median ${ms(med(cold))}` : ''}.`;
  const ticks = [0, 0.5, 1].map((f) => f * vmax);
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={summary} data-testid="chart">
        {ticks.map((v) => (
          <g>
            <line x1={pad.l} x2={W - pad.r} y1={y(v)} y2={y(v)} class="grid" />
            <text x={pad.l - 6} y={y(v) + 4} text-anchor="end" class="axis">
              {ms(v)}
            </text>
          </g>
        ))}
        <text x={pad.l} y={H - 8} class="axis">
          {clock(new Date(t0).toISOString())}
        </text>
        <text x={W - pad.r} y={H - 8} text-anchor="end" class="axis">
          {clock(new Date(t1).toISOString())}
        </text>
        {snap.length > 1 && <polyline class="line-snapshot" points={snap.map((p) => `${x(p.t)},${y(p.v)}`).join(' ')} />}
        {cold.length > 1 && <polyline class="line-cold" points={cold.map((p) => `${x(p.t)},${y(p.v)}`).join(' ')} />}
        {snap.map((p) => (
          <circle cx={x(p.t)} cy={y(p.v)} r="5" class="pt-snapshot">
            <title>{`snapshot, ${ms(p.v)}, ${when(p.w.at)}`}</title>
          </circle>
        ))}
        {cold.map((p) => (
          <path d={`M${x(p.t)},${y(p.v) - 6} l6,10 h-12 z`} class="pt-cold">
            <title>{`cold, ${ms(p.v)}, ${when(p.w.at)}`}</title>
          </path>
        ))}
      </svg>
      <figcaption>
        <span class="legend">
          <svg width="14" height="14" aria-hidden="true">
            <circle cx="7" cy="7" r="5" class="pt-snapshot" />
          </svg>{' '}
          snapshot
        </span>{' '}
        <span class="legend">
          <svg width="14" height="14" aria-hidden="true">
            <path d="M7,1 l6,11 h-12 z" class="pt-cold" />
          </svg>{' '}
          cold
        </span>{' '}
        — {summary}
      </figcaption>
    </figure>
  );
}
