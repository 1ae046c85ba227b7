// The dashboard's shell: sign-in check, the one live event stream, hash routes.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { get, openFeed, session, SignedOut, type FeedEvent, type LinkState, type Overview } from './api.ts';
import { bus, upsert } from './bus.ts';
import { AppDetailPage } from './detail.tsx';
import { AppsPage, NodesPage, SeedsPage } from './pages.tsx';
import './style.css';

function useRoute(): string {
  const [r, setR] = useState(location.hash.slice(1) || '/');
  useEffect(() => {
    const f = () => setR(location.hash.slice(1) || '/');
    addEventListener('hashchange', f);
    return () => removeEventListener('hashchange', f);
  }, []);
  return r;
}

/** Apply one feed event to the overview (rows are whole, so applying twice is harmless). */
function apply(o: Overview, e: FeedEvent): Overview {
  const d = e.data as any;
  switch (e.type) {
    case 'app':
      return { ...o, apps: upsert(o.apps, d, (a) => a.name) };
    case 'app_deleted':
      return { ...o, apps: o.apps.filter((a) => a.name !== d.name) };
    case 'wake':
      return { ...o, apps: o.apps.map((a) => (a.name === d.app && (!a.last_wake || a.last_wake.at <= d.at) ? { ...a, last_wake: d } : a)) };
    case 'seed': {
      const had = o.seeds.find((s) => s.id === d.id);
      return { ...o, seeds: upsert(o.seeds, { ...d, held_by: had?.held_by ?? (d.node ? [d.node] : []) }, (s) => s.id) };
    }
    case 'seed_deleted':
      return { ...o, seeds: o.seeds.filter((s) => s.id !== d.id) };
    case 'node':
      return { ...o, nodes: o.nodes.map((n) => (n.name === d.name ? { ...n, capacity: d.capacity, running: d.running, seeds: d.seeds, last_heartbeat_at: d.last_heartbeat_at, state: 'up' } : n)) };
    default:
      return o;
  }
}

const LINK_TEXT: Record<LinkState, string> = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…', closed: 'disconnected' };

function Shell() {
  const route = useRoute();
  const [ov, setOv] = useState<Overview | null>(null);
  const [link, setLink] = useState<LinkState>('connecting');
  const [signedOut, setSignedOut] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [gen, setGen] = useState(0); // bumped by a reset event: reload everything

  useEffect(() => {
    let close = () => {};
    let stopped = false;
    (async () => {
      try {
        await session();
        const o = await get<Overview>('/ui/api/overview');
        if (stopped) return;
        setOv(o);
        close = openFeed(
          o.last_event_id,
          (e) => {
            if (e.type === 'reset') return setGen((g) => g + 1);
            setOv((cur) => (cur ? apply(cur, e) : cur));
            bus.emit(e);
          },
          setLink,
        );
      } catch (err) {
        if (err instanceof SignedOut) setSignedOut(true);
        else setError((err as Error).message);
      }
    })();
    return () => {
      stopped = true;
      close();
    };
  }, [gen]);

  useEffect(() => {
    const title = route.startsWith('/apps/') ? decodeURIComponent(route.slice(6)) : route === '/seeds' ? 'Seeds' : route === '/nodes' ? 'Nodes' : 'Apps';
    document.title = `${title} · Thaw`;
  }, [route]);

  const nav = [
    ['/', 'Apps'],
    ['/seeds', 'Seeds'],
    ['/nodes', 'Nodes'],
  ] as const;
  const current = (p: string) => (p === '/' ? route === '/' || route.startsWith('/apps/') : route === p);
  let body;
  if (signedOut)
    body = (
      <section class="notice" role="alert">
        <h1>Signed out</h1>
        <p>
          Run <code>thaw dashboard</code> on the host and open the URL it prints.
        </p>
      </section>
    );
  else if (error) body = <p role="alert" class="error">Could not load the dashboard: {error}</p>;
  else if (!ov) body = <p aria-busy="true">Loading…</p>;
  else if (route.startsWith('/apps/')) body = <AppDetailPage key={route + gen} name={decodeURIComponent(route.slice(6))} overview={ov} />;
  else if (route === '/seeds') body = <SeedsPage ov={ov} />;
  else if (route === '/nodes') body = <NodesPage ov={ov} />;
  else body = <AppsPage ov={ov} />;
  return (
    <>
      <a
        class="skip"
        href="#main"
        onClick={(ev) => {
          ev.preventDefault(); // the hash holds the route
          document.getElementById('main')?.focus();
        }}
      >
        Skip to content
      </a>
      <header>
        <span class="brand" aria-hidden="true">
          ❄ Thaw
        </span>
        <nav aria-label="Main">
          {nav.map(([p, l]) => (
            <a href={`#${p}`} aria-current={current(p) ? 'page' : undefined}>
              {l}
            </a>
          ))}
        </nav>
        <span class={`link link-${link}`} role="status" aria-live="polite" data-testid="link">
          <span aria-hidden="true" class="dot" /> {LINK_TEXT[link]}
        </span>
      </header>
      <main id="main" tabIndex={-1}>
        {body}
      </main>
    </>
  );
}

render(<Shell />, document.getElementById('root')!);
