// The list pages: apps, seeds, nodes. Tables that become labelled cards on a
// narrow screen (style.css); every state is a word, not only a colour.
import { useEffect, useState } from 'preact/hooks';
import type { App, Overview } from './api.ts';
import { age, bytes, ms, when } from './format.ts';

/** Re-render every `everyMs` so relative times ("2 minutes ago") stay true. No data is fetched. */
export function useTick(everyMs = 15_000): number {
  const [t, setT] = useState(Date.now());
  useEffect(() => {
    const id = setInterval(() => setT(Date.now()), everyMs);
    return () => clearInterval(id);
  }, [everyMs]);
  return t;
}

const STATE_ICON: Record<string, string> = { running: '▶', asleep: '☾', waking: '↻', sleeping: '↓', failed: '✕', building: '⚙', created: '○', deleting: '✕' };

export function StateBadge({ state }: { state: string }) {
  return (
    <span class={`state state-${state}`} data-testid="state">
      <span aria-hidden="true">{STATE_ICON[state] ?? '•'} </span>
      {state}
    </span>
  );
}

export function ModeBadge({ mode }: { mode: 'snapshot' | 'cold' }) {
  return (
    <span class={`mode mode-${mode}`}>
      <span aria-hidden="true">{mode === 'snapshot' ? '❄ ' : '▲ '}</span>
      {mode}
    </span>
  );
}

function LastWake({ a, now }: { a: App; now: number }) {
  const w = a.last_wake;
  if (!w) return <span>never</span>;
  return (
    <span>
      <ModeBadge mode={w.boot_mode} /> {ms(w.wall_ms)}, <time dateTime={w.at} title={when(w.at)}>{age(w.at, now)}</time>
    </span>
  );
}

export function AppsPage({ ov }: { ov: Overview }) {
  const now = useTick();
  const seedOf = (a: App) => ov.seeds.find((s) => s.id === a.seed_id);
  return (
    <section aria-labelledby="apps-h">
      <h1 id="apps-h">Apps</h1>
      {ov.apps.length === 0 ? (
        <p>No apps yet. Deploy one with <code>thaw deploy DIR --name NAME</code>.</p>
      ) : (
        <table class="cards">
          <thead>
            <tr>
              <th scope="col">App</th>
              <th scope="col">State</th>
              <th scope="col">Deploy</th>
              <th scope="col">Last wake</th>
              <th scope="col">Seed</th>
              <th scope="col">Node</th>
              <th scope="col">Volume</th>
            </tr>
          </thead>
          <tbody>
            {ov.apps.map((a) => (
              <tr key={a.name} data-app={a.name}>
                <th scope="row" data-label="App">
                  <a href={`#/apps/${encodeURIComponent(a.name)}`}>{a.name}</a>
                </th>
                <td data-label="State">
                  <StateBadge state={a.state} />
                </td>
                <td data-label="Deploy">
                  <code>{a.deploy_id ?? '—'}</code>
                </td>
                <td data-label="Last wake">
                  <LastWake a={a} now={now} />
                </td>
                <td data-label="Seed">{seedOf(a) ? bytes(seedOf(a)!.bytes_allocated) : 'none'}</td>
                <td data-label="Node">{a.node ?? '—'}</td>
                <td data-label="Volume">{a.volume ? `${a.volume.path} (${bytes(a.volume.size_bytes)})` : 'none'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

export function SeedsPage({ ov }: { ov: Overview }) {
  const now = useTick();
  return (
    <section aria-labelledby="seeds-h">
      <h1 id="seeds-h">Seeds</h1>
      {ov.seeds.length === 0 ? (
        <p>No seeds: an app is baked into one the first time it goes idle after a deploy.</p>
      ) : (
        <table class="cards">
          <thead>
            <tr>
              <th scope="col">Seed</th>
              <th scope="col">App</th>
              <th scope="col">Apparent</th>
              <th scope="col">Allocated</th>
              <th scope="col">Compressed</th>
              <th scope="col">Replicated</th>
              <th scope="col">Held by</th>
              <th scope="col">Last use</th>
            </tr>
          </thead>
          <tbody>
            {ov.seeds.map((s) => (
              <tr key={s.id}>
                <th scope="row" data-label="Seed">
                  <code title={s.id}>{s.id.slice(0, 12)}</code>
                </th>
                <td data-label="App">{s.app}</td>
                <td data-label="Apparent">{bytes(s.bytes_apparent)}</td>
                <td data-label="Allocated">{bytes(s.bytes_allocated)}</td>
                <td data-label="Compressed">{s.bytes_compressed === null ? 'not uploaded' : bytes(s.bytes_compressed)}</td>
                <td data-label="Replicated">{s.replicated ? '✓ yes' : '✗ no'}</td>
                <td data-label="Held by">{s.held_by && s.held_by.length ? s.held_by.join(', ') : 'object storage only'}</td>
                <td data-label="Last use">
                  <time dateTime={s.last_used_at} title={when(s.last_used_at)}>
                    {age(s.last_used_at, now)}
                  </time>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

export function NodesPage({ ov }: { ov: Overview }) {
  const now = useTick();
  const cached = (node: string) => ov.seeds.filter((s) => s.held_by?.includes(node)).reduce((n, s) => n + s.bytes_allocated, 0);
  return (
    <section aria-labelledby="nodes-h">
      <h1 id="nodes-h">Nodes</h1>
      <table class="cards">
        <thead>
          <tr>
            <th scope="col">Node</th>
            <th scope="col">State</th>
            <th scope="col">Running VMs</th>
            <th scope="col">Capacity</th>
            <th scope="col">Cached seeds</th>
            <th scope="col">Last heartbeat</th>
          </tr>
        </thead>
        <tbody>
          {ov.nodes.map((n) => (
            <tr key={n.name}>
              <th scope="row" data-label="Node">
                {n.name}
                {n.local ? ' (in-process)' : ''}
              </th>
              <td data-label="State">
                <span class={`state state-${n.state === 'up' ? 'running' : 'failed'}`}>{n.state === 'up' ? '▲ up' : '▼ down'}</span>
              </td>
              <td data-label="Running VMs">{n.running}</td>
              <td data-label="Capacity">{n.capacity}</td>
              <td data-label="Cached seeds">
                {n.seeds} ({bytes(cached(n.name))})
              </td>
              <td data-label="Last heartbeat">{n.local ? 'in-process (no heartbeat)' : <time dateTime={n.last_heartbeat_at ?? ''} title={when(n.last_heartbeat_at)}>{age(n.last_heartbeat_at, now)}</time>}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
