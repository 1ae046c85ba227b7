// The web dashboard on the control API's port, under /ui/ (docs/API.md):
// the built page (web/, see web-assets.ts), its JSON data calls and two
// Server-Sent Event streams (the control plane's event feed, an app's log).
// Auth is a browser session (session.ts), not the bearer token: /ui/login
// redeems a one-time code for an HttpOnly SameSite=Strict cookie, every
// /ui/api/ call without it is 401, and actions also need the session's
// x-csrf-token. Env values never leave the store here: only names.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { ControlService } from '../control/types.ts';
import { EventFeed, type FeedEvent } from '../control/events.ts';
import { ThawError } from '../errors.ts';
import { parseOrThrow } from '../http/parse.ts';
import { NameParams, toAppWire, toSeedWire, toWakeWire } from './schemas.ts';
import { Sessions, sessionCookie, SESSION_COOKIE, type Session } from './session.ts';
import { webDir } from './web-assets.ts';

export interface UiOptions {
  service: ControlService;
  feed: EventFeed;
  sessions?: Sessions;
  /** Folder of the built page (default: the cache folder for the current web/ sources). */
  webDir?: string;
  /** SSE comment interval that keeps idle connections alive (default 20 s). */
  keepAliveMs?: number;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};
const CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
const LoginQuery = z.object({ code: z.string().min(1).max(200) });
const LogParams = NameParams;

/** Register /ui/* on `app`. The API's bearer-token hook must skip /ui (server.ts). */
export function registerUi(app: FastifyInstance, o: UiOptions): Sessions {
  const sessions = o.sessions ?? new Sessions();
  const keepAliveMs = o.keepAliveMs ?? 20_000;
  const session = (req: FastifyRequest): Session => sessions.fromCookie(req.headers.cookie);
  const action = (req: FastifyRequest): void => sessions.checkCsrf(session(req), req.headers['x-csrf-token']);
  const nameOf = (req: FastifyRequest) => parseOrThrow(NameParams, req.params, 'path').name;

  // ---- sign-in (the code comes from POST /v1/dashboard/login, bearer-authenticated) ----
  app.post('/v1/dashboard/login', async () => {
    const { code, expiresAt } = sessions.issueCode();
    return { login_path: `/ui/login?code=${encodeURIComponent(code)}`, expires_at: new Date(expiresAt).toISOString() };
  });
  app.get('/ui/login', async (req, reply) => {
    reply.header('cache-control', 'no-store').header('referrer-policy', 'no-referrer');
    try {
      const { id } = sessions.redeem(parseOrThrow(LoginQuery, req.query, 'query').code);
      // 303 to a URL without the code: it leaves the address bar and the history entry.
      return reply.code(303).header('set-cookie', sessionCookie(id)).header('location', '/ui/').send();
    } catch (err) {
      if (!(err instanceof ThawError)) throw err;
      const e = err.code === 'LOGIN_CODE_INVALID' ? err : new ThawError('LOGIN_CODE_INVALID', 'no login code in the URL');
      return reply.code(401).type('text/html; charset=utf-8').header('content-security-policy', CSP).send(page('Sign-in refused', `${e.message}. ${e.hint}`));
    }
  });
  app.post('/ui/logout', async (req, reply) => {
    action(req);
    sessions.end(req.headers.cookie);
    return reply.header('set-cookie', `${SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0`).send({ ok: true });
  });

  // ---- the page ----------------------------------------------------------------------
  const dir = () => o.webDir ?? webDir();
  const serve = async (reply: FastifyReply, rel: string) => {
    const file = path.join(dir(), rel);
    if (!file.startsWith(dir() + path.sep)) throw new ThawError('NOT_FOUND', 'no such file');
    let body: Buffer;
    try {
      body = await readFile(file);
    } catch {
      if (rel !== 'index.html') throw new ThawError('NOT_FOUND', `no file ${rel}`);
      return reply.code(503).type('text/html; charset=utf-8').send(page('Dashboard not built', 'Run `npm run setup` (it builds web/ into the cache), then reload.'));
    }
    const immutable = rel.startsWith('assets/');
    return reply
      .type(TYPES[path.extname(rel)] ?? 'application/octet-stream')
      .header('cache-control', immutable ? 'public, max-age=31536000, immutable' : 'no-cache')
      .header('content-security-policy', CSP)
      .header('x-content-type-options', 'nosniff')
      .send(body);
  };
  app.get('/ui', async (_req, reply) => reply.code(308).header('location', '/ui/').send());
  app.get('/ui/', async (_req, reply) => serve(reply, 'index.html'));
  app.get('/ui/assets/:file', async (req, reply) => {
    const { file } = parseOrThrow(z.object({ file: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/) }), req.params, 'path');
    return serve(reply, `assets/${file}`);
  });

  // ---- data (session required) -------------------------------------------------------
  app.addHook('onRequest', async (req, reply) => {
    if (!req.url.startsWith('/ui/api/')) return;
    reply.header('cache-control', 'no-store');
    session(req);
  });
  app.get('/ui/api/session', async (req) => ({ csrf: session(req).csrf, last_event_id: o.feed.lastId }));
  app.get('/ui/api/overview', async () => {
    const last_event_id = o.feed.lastId; // read first: events after it are replayed to the stream
    const apps = await o.service.listApps();
    const [seeds, nodes, holders, volumes] = await Promise.all([o.service.seeds(), o.service.nodes(), o.service.seedHolders(), o.service.listVolumes()]);
    const volumeOf = new Map(volumes.map((v) => [v.app, { path: v.path, size_bytes: v.sizeBytes, node: v.node }]));
    const lastWakes = await Promise.all(apps.map((a) => o.service.wakes(a.name, 1).then((w) => w[0] ?? null)));
    return {
      last_event_id,
      apps: apps.map((a, i) => ({ ...toAppWire(a), last_wake: lastWakes[i] ? toWakeWire(lastWakes[i]) : null, volume: volumeOf.get(a.name) ?? null })),
      seeds: seeds.map((s) => ({ ...toSeedWire(s), held_by: holders[s.id] ?? [] })),
      nodes,
    };
  });
  app.get('/ui/api/apps/:name', async (req) => {
    const name = nameOf(req);
    const last_event_id = o.feed.lastId;
    const a = await o.service.getApp(name);
    const [env, wakes] = await Promise.all([o.service.listEnv(name), o.service.wakes(name, 100)]);
    // Names only: listEnv never returns values.
    return { last_event_id, app: toAppWire(a), env_names: env.map((e) => e.key), wakes: wakes.map(toWakeWire) };
  });
  app.post('/ui/api/apps/:name/wake', async (req) => {
    action(req);
    return { wake: toWakeWire(await o.service.wake(nameOf(req))) };
  });
  app.post('/ui/api/apps/:name/sleep', async (req) => {
    action(req);
    const r = await o.service.sleep(nameOf(req));
    return { baked: r.baked };
  });

  // ---- live streams -------------------------------------------------------------------
  app.get('/ui/api/events', async (req, reply) => {
    const since = lastEventId(req);
    const sse = openSse(reply, keepAliveMs);
    const off = o.feed.subscribe((e: FeedEvent) => sse.send(e.type, e.id, e.data), since);
    sse.closed.then(off, off);
  });
  app.get('/ui/api/apps/:name/logs', async (req, reply) => {
    const name = parseOrThrow(LogParams, req.params, 'path').name;
    // Event ids are character offsets into the app's log: a reconnect resumes after them.
    let sent = Number(lastEventId(req) ?? 0) || 0;
    const ac = new AbortController();
    const text = await o.service.logs(name, { follow: true, signal: ac.signal });
    const sse = openSse(reply, keepAliveMs);
    sse.closed.then(() => ac.abort(), () => ac.abort());
    let seen = 0;
    void (async () => {
      for await (const chunk of text) {
        const from = Math.max(0, sent - seen);
        seen += chunk.length;
        if (from < chunk.length) {
          sent = seen;
          sse.send('log', String(seen), { app: name, text: chunk.slice(from) });
        }
      }
    })().catch((err: unknown) => req.log.warn({ err }, 'log stream failed'));
  });

  return sessions;
}

function lastEventId(req: FastifyRequest): string | null {
  const h = req.headers['last-event-id'];
  if (typeof h === 'string' && h) return h;
  const q = (req.query as { since?: unknown }).since;
  return typeof q === 'string' && q ? q : null;
}

/** Take over the response as an SSE stream; `closed` settles when the client leaves. */
function openSse(reply: FastifyReply, keepAliveMs: number) {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no', connection: 'keep-alive' });
  res.write('retry: 2000\n\n');
  const timer = setInterval(() => res.write(': keep-alive\n\n'), keepAliveMs);
  const closed = new Promise<void>((resolve) => res.once('close', () => (clearInterval(timer), resolve())));
  return {
    closed,
    send(type: string, id: string, data: unknown) {
      if (!res.writableEnded) res.write(`event: ${type}\nid: ${id}\ndata: ${JSON.stringify(data)}\n\n`);
    },
  };
}

function page(title: string, text: string): string {
  const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>${esc(title)} · Thaw</title></head><body><main><h1>${esc(title)}</h1><p>${esc(text)}</p></main></body></html>`;
}
