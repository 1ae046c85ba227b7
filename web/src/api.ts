// Data calls of the dashboard (/ui/api/*, session cookie) and the live event
// stream. The page never polls: it loads a snapshot once, then applies the
// control plane's events (EventSource reconnects by itself and sends
// Last-Event-ID, so the server replays what was missed).

import type { AppDetail, Overview } from './types.ts';

export type { App, AppDetail, Node, Overview, Seed, Wake } from './types.ts';

export class SignedOut extends Error {}

/** A failed call, with the API's error code and words. */
export class ApiError extends Error {
  constructor(readonly code: string, message: string, readonly hint: string) {
    super(message);
  }
}

async function check(r: Response): Promise<unknown> {
  if (r.status === 401) throw new SignedOut('signed out');
  const body = (await r.json().catch(() => null)) as { error?: { code: string; message: string; hint: string } } | null;
  if (!r.ok) throw new ApiError(body?.error?.code ?? `HTTP_${r.status}`, body?.error?.message ?? r.statusText, body?.error?.hint ?? '');
  return body;
}

export async function get<T>(path: string): Promise<T> {
  return (await check(await fetch(path, { credentials: 'same-origin', headers: { accept: 'application/json' } }))) as T;
}

let csrf: string | null = null;

/** The session's CSRF token (and so a check that the session exists). */
export async function session(): Promise<{ csrf: string; last_event_id: string }> {
  const s = await get<{ csrf: string; last_event_id: string }>('/ui/api/session');
  csrf = s.csrf;
  return s;
}

export async function act<T>(path: string): Promise<T> {
  const r = await fetch(path, { method: 'POST', credentials: 'same-origin', headers: { 'x-csrf-token': csrf ?? '', accept: 'application/json' } });
  return (await check(r)) as T;
}

export type FeedType = 'app' | 'app_deleted' | 'wake' | 'seed' | 'seed_deleted' | 'node' | 'reset';
export interface FeedEvent {
  type: FeedType;
  data: Record<string, unknown>;
}
export type LinkState = 'connecting' | 'live' | 'reconnecting' | 'closed';

const TYPES: FeedType[] = ['app', 'app_deleted', 'wake', 'seed', 'seed_deleted', 'node', 'reset'];

/** Open the event stream after `since` (the snapshot's last_event_id); returns a closer. */
export function openFeed(since: string, onEvent: (e: FeedEvent) => void, onState: (s: LinkState) => void): () => void {
  const es = new EventSource(`/ui/api/events${since ? `?since=${encodeURIComponent(since)}` : ''}`);
  onState('connecting');
  es.onopen = () => onState('live');
  es.onerror = () => onState(es.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
  for (const t of TYPES) es.addEventListener(t, (m) => onEvent({ type: t, data: JSON.parse((m as MessageEvent<string>).data) as Record<string, unknown> }));
  return () => es.close();
}

/** Follow an app's log; `onText` gets each new piece. */
export function openLog(app: string, onText: (text: string) => void, onState: (s: LinkState) => void): () => void {
  const es = new EventSource(`/ui/api/apps/${encodeURIComponent(app)}/logs`);
  onState('connecting');
  es.onopen = () => onState('live');
  es.onerror = () => onState(es.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
  es.addEventListener('log', (m) => onText((JSON.parse((m as MessageEvent<string>).data) as { text: string }).text));
  return () => es.close();
}
