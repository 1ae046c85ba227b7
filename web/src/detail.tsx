// One app: state and actions, the wake timeline (waterfalls), the wall-time
// chart, env var names (never values) and a live log tail. Loads once, then
// follows the event bus; events that arrive while loading are applied after.
import { useEffect, useRef, useState } from 'preact/hooks';
import { act, ApiError, get, openLog, type AppDetail, type FeedEvent, type LinkState, type Overview, type Wake } from './api.ts';
import { bus, upsert } from './bus.ts';
import { when } from './format.ts';
import { StateBadge } from './pages.tsx';
import { Timeline, WallChart } from './timeline.tsx';

function applyDetail(d: AppDetail, e: FeedEvent): AppDetail {
  const x = e.data as any;
  if (e.type === 'app' && x.name === d.app.name) return { ...d, app: { ...d.app, ...x } };
  if (e.type === 'wake' && x.app === d.app.name) {
    const wakes = upsert(d.wakes, x as Wake, (w) => w.id).sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0));
    return { ...d, wakes };
  }
  return d;
}

function LogTail({ app }: { app: string }) {
  const [text, setText] = useState('');
  const [link, setLink] = useState<LinkState>('connecting');
  const pre = useRef<HTMLPreElement>(null);
  useEffect(() => openLog(app, (t) => setText((cur) => (cur + t).slice(-64 * 1024)), setLink), [app]);
  useEffect(() => {
    const el = pre.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [text]);
  return (
    <section aria-labelledby="log-h">
      <h2 id="log-h">
        Log <span class="muted">({link === 'live' ? 'following' : link})</span>
      </h2>
      <pre ref={pre} class="log" tabIndex={0} aria-label={`log of ${app}`} data-testid="log">
        {text || '(no output yet: the log lives on the node the app last ran on)'}
      </pre>
    </section>
  );
}

export function AppDetailPage({ name }: { name: string; overview: Overview }) {
  const [d, setD] = useState<AppDetail | null>(null);
  const [err, setErr] = useState<string | null>(null);
  const [busy, setBusy] = useState<'wake' | 'sleep' | null>(null);
  const [msg, setMsg] = useState('');

  useEffect(() => {
    const queue: FeedEvent[] = [];
    let loaded = false;
    const off = bus.on((e) => (loaded ? setD((cur) => (cur ? applyDetail(cur, e) : cur)) : queue.push(e)));
    get<AppDetail>(`/ui/api/apps/${encodeURIComponent(name)}`)
      .then((r) => {
        loaded = true;
        setD(queue.reduce(applyDetail, r));
      })
      .catch((e: Error) => setErr(e instanceof ApiError ? `${e.message}. ${e.hint}` : e.message));
    return off;
  }, [name]);

  const run = async (what: 'wake' | 'sleep') => {
    setBusy(what);
    setMsg(what === 'wake' ? `Waking ${name}…` : `Putting ${name} to sleep…`);
    try {
      await act(`/ui/api/apps/${encodeURIComponent(name)}/${what}`);
      setMsg(what === 'wake' ? `${name} is awake.` : `${name} is asleep.`);
    } catch (e) {
      setMsg(`Could not ${what} ${name}: ${(e as Error).message}`);
    } finally {
      setBusy(null);
    }
  };

  if (err) return <p role="alert" class="error">{err}</p>;
  if (!d) return <p aria-busy="true">Loading {name}…</p>;
  const a = d.app;
  const canWake = ['asleep', 'failed'].includes(a.state) && !!a.deploy_id;
  const canSleep = a.state === 'running';
  return (
    <article aria-labelledby="app-h">
      <p>
        <a href="#/">← Apps</a>
      </p>
      <div class="app-head">
        <h1 id="app-h">{a.name}</h1>
        <StateBadge state={a.state} />
        <div class="actions">
          <button type="button" onClick={() => run('wake')} disabled={!canWake || busy !== null} aria-describedby="act-msg">
            {busy === 'wake' ? 'Waking…' : 'Wake'}
          </button>
          <button type="button" onClick={() => run('sleep')} disabled={!canSleep || busy !== null} aria-describedby="act-msg">
            {busy === 'sleep' ? 'Sleeping…' : 'Sleep'}
          </button>
        </div>
      </div>
      <p id="act-msg" role="status" aria-live="polite" class="muted">
        {msg}
      </p>
      {a.error && (
        <p class="error" role="alert">
          Last error: {a.error}
        </p>
      )}
      <dl class="facts">
        <dt>URL</dt>
        <dd>{a.url ? <a href={a.url}>{a.url}</a> : '—'}</dd>
        <dt>Deploy</dt>
        <dd>
          <code>{a.deploy_id ?? 'none'}</code>
        </dd>
        <dt>Node</dt>
        <dd>{a.node ?? '—'}</dd>
        <dt>Idle timeout</dt>
        <dd>{a.idle_timeout_s} s</dd>
        <dt>Last wake started</dt>
        <dd>{when(a.last_wake_at)}</dd>
      </dl>
      <section aria-labelledby="wakes-h">
        <h2 id="wakes-h">Wakes</h2>
        {d.wakes.length === 0 ? <p>No wakes yet.</p> : <Timeline wakes={d.wakes.slice(0, 20)} />}
        <p class="par-note">All rows share one time axis. ∥ marks stages that run side by side after a restore (agent, gate, app start); first response is the router's first byte of the app's answer.</p>
      </section>
      <section aria-labelledby="chart-h">
        <h2 id="chart-h">Wake wall time</h2>
        <WallChart wakes={d.wakes} />
      </section>
      <section aria-labelledby="env-h">
        <h2 id="env-h">Env</h2>
        {d.env_names.length === 0 ? (
          <p>No env vars.</p>
        ) : (
          <ul class="env" data-testid="env">
            {d.env_names.map((k) => (
              <li>
                <code>{k}</code>
              </li>
            ))}
          </ul>
        )}
        <p class="muted">Names only: values never leave the control plane.</p>
      </section>
      <LogTail app={a.name} />
    </article>
  );
}
