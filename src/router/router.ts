// Thaw's router: an HTTP reverse proxy that picks the app from the Host header
// (`NAME.<suffix>`), holds requests while the app wakes, counts in-flight
// requests and puts idle apps to sleep. HTTP goes through undici keep-alive
// pools; WebSocket upgrades through http-proxy-3.
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { createProxyServer } from 'http-proxy-3';
import { pino } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import { AppTable, type AppExchange, type AppState, type Sink } from './apps.ts';
import { ALLOW, isWebSocketUpgrade, normalizeTarget, replayWithoutUpgrade } from './http1.ts';
import { sendError, sendHealth, sendOptions, sendSocketError } from './reply.ts';
import { Exchange, Upstreams, kExchange, originOf, type ExchangeHooks, type Tagged } from './upstream.ts';
import { DEFAULT_TIMEOUTS, type Address, type RequestGate, type RouterOptions, type RouterStats, type RouterTimeouts } from './types.ts';

export type { AppDirectory, DrainResult, RequestGate, RouterOptions, RouterStats, RouterTimeouts, WakeResult } from './types.ts';

/** Router errors for a client error Node reports (a malformed or too slow request), by Node's code. */
const CLIENT_ERRORS: Record<string, () => ThawError> = {
  ERR_HTTP_REQUEST_TIMEOUT: () => new ThawError('REQUEST_TIMEOUT', 'the request was not received in time'),
  HPE_HEADER_OVERFLOW: () => new ThawError('HEADERS_TOO_LARGE', 'the request headers are too large'),
};

/** Upstream (undici) failures that mean the app was too slow: 504, never 502. */
const UPSTREAM_TIMEOUTS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT']);

export interface Router extends RequestGate {
  server: http.Server;
  /** Listen (host defaults to 127.0.0.1); resolves with the bound port. */
  listen(port: number, host?: string): Promise<number>;
  /** Stop accepting, answer held requests 503 SHUTTING_DOWN, wait up to closeGraceMs for in-flight ones, then cut. */
  close(): Promise<void>;
  inflight(name: string): number;
  stats(): RouterStats;
  /** Resolves when nothing is in flight. */
  drain(): Promise<void>;
  /** An app woken outside the router (API, CLI) is served at `address`: idle it to zero like the others. */
  adopt(name: string, address: { host: string; port: number }, idleTimeoutS: number): void;
}

const HEALTH_PATH = '/__thaw/health';

/** Host header -> app name, or null. Results are cached (bounded). */
export function hostResolver(suffix: string): (host: string | undefined) => string | null {
  const dotSuffix = '.' + suffix.toLowerCase().replace(/^\.+|\.+$/g, '');
  const cache = new Map<string, string | null>();
  const parse = (host: string): string | null => {
    let h = host.toLowerCase();
    if (h.startsWith('[')) return null;
    const colon = h.indexOf(':');
    if (colon !== -1) h = h.slice(0, colon);
    if (h.endsWith('.')) h = h.slice(0, -1);
    if (!h.endsWith(dotSuffix)) return null;
    const name = h.slice(0, h.length - dotSuffix.length);
    return name === '' || name.includes('.') ? null : name;
  };
  return (host) => {
    if (host === undefined) return null;
    let name = cache.get(host);
    if (name !== undefined) return name;
    name = parse(host);
    if (cache.size >= 4096) cache.clear();
    cache.set(host, name);
    return name;
  };
}

function notFound(host: string | undefined, name: string | null): ThawError {
  const msg = name === null ? `no app for host "${host ?? ''}"` : `no app named "${name}"`;
  return new ThawError('APP_NOT_FOUND', msg, { details: { host: host ?? null } });
}

export function createRouter(opts: RouterOptions): Router {
  const { dir } = opts;
  const log = opts.log ?? pino({ level: 'silent' });
  const resolve = hostResolver(opts.suffix ?? 'localhost');
  const closeGraceMs = opts.closeGraceMs ?? 5000;
  const timeouts: RouterTimeouts = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
  const upstreams = new Upstreams({ headersMs: timeouts.upstreamHeadersMs, bodyMs: timeouts.upstreamBodyMs });
  const wsProxy = createProxyServer({});
  wsProxy.on('error', () => {}); // errors are handled per call below
  const wsSockets = new Set<Duplex>();
  let proxied = 0;
  let upstreamErrors = 0;
  /** Wakes whose first response was reported (held requests share one WakeResult). */
  const answered = new WeakSet<object>();

  const hooks: ExchangeHooks = {
    firstByte(ex, wake) {
      // wallMs 0: the app was already running (the directory answered with its last wake).
      if (answered.has(wake) || wake.startedAt === undefined || wake.wallMs === 0 || !dir.firstByte) return;
      answered.add(wake);
      const app = (ex.app as AppState).name;
      dir.firstByte(app, wake.wakeId, performance.now() - wake.startedAt).catch((err: unknown) => log.warn({ app, err: (err as Error).message }, 'could not record the first byte of a wake'));
    },
    upstreamError(ex, err) {
      upstreamErrors++;
      const res = ex.res as ServerResponse;
      const app = (ex.app as AppState).name;
      const code = (err as { code?: string }).code;
      log.warn({ app, code, err: err.message }, 'upstream failed');
      if (ex.started) {
        res.destroy();
        return;
      }
      const timeout = code !== undefined && UPSTREAM_TIMEOUTS.has(code);
      const e = timeout
        ? new ThawError('UPSTREAM_TIMEOUT', `app "${app}" did not answer in time (${code})`, { details: { app, cause: code } })
        : new ThawError('VM_GONE', `app "${app}" is unreachable: ${err.message}`, { details: { app, cause: code ?? null } });
      sendError(res, timeout ? 504 : 502, e);
    },
  };

  function forwardWs(ex: AppExchange, a: Address): void {
    const req = ex.req;
    const socket = ex.socket as Socket;
    const h = req.headers;
    const ip = req.socket.remoteAddress ?? '';
    h['x-forwarded-for'] = h['x-forwarded-for'] === undefined ? ip : `${String(h['x-forwarded-for'])}, ${ip}`;
    if (h.host !== undefined) h['x-forwarded-host'] = h.host;
    h['x-forwarded-proto'] = 'http';
    wsProxy.ws(req, socket, ex.head, { target: originOf(a) }, (err) => {
      upstreamErrors++;
      log.warn({ app: ex.app.name, err: (err as Error).message }, 'websocket upstream failed');
      if (socket.bytesWritten === 0) {
        const e = new ThawError('VM_GONE', `app "${ex.app.name}" is unreachable: ${(err as Error).message}`, { details: { app: ex.app.name } });
        sendSocketError(socket, 502, e);
      }
    });
  }

  const sink: Sink = {
    forward(ex, address, wake) {
      proxied++;
      if (ex.res !== null) {
        if (!ex.cancelled) ex.forward(upstreams.get(address), wake);
      } else if (ex.socket !== null && !ex.socket.destroyed) forwardWs(ex, address);
    },
    reject(ex, status, err, retryAfterS) {
      if (ex.res !== null) sendError(ex.res, status, err, retryAfterS);
      else if (ex.socket !== null) sendSocketError(ex.socket, status, err, retryAfterS);
    },
    asleep(_app, old) {
      if (old !== null) upstreams.drop(old);
    },
  };

  const table = new AppTable(dir, sink, { maxHeld: opts.maxHeld ?? 1000, wakeTimeoutMs: opts.wakeTimeoutMs ?? 60_000, log });

  /** Resolve the app for a request, or the ThawError to answer with (its status is the HTTP status). */
  function route(req: IncomingMessage): { app: AppState; address: Address | null } | ThawError {
    if (table.closing) return new ThawError('SHUTTING_DOWN', 'the router is shutting down');
    const host = req.headers.host;
    const name = resolve(host);
    if (name === null) return notFound(host, null);
    let entry;
    try {
      entry = dir.lookup(name);
    } catch (err) {
      log.error({ app: name, err }, 'app lookup failed');
      return asThawError(err);
    }
    if (entry === null) return notFound(host, name);
    return { app: table.get(name, entry.idleTimeoutS, entry.wakeTimeoutS), address: entry.address };
  }

  function onResClose(this: Tagged<ServerResponse>): void {
    const ex = this[kExchange] as AppExchange;
    if (ex.timer !== null) table.unhold(ex);
    if (!this.writableFinished) ex.cancel();
    table.end(ex.app);
  }

  function onRequest(req: IncomingMessage, res: ServerResponse): void {
    const url = req.url;
    if (url === HEALTH_PATH || url?.startsWith(HEALTH_PATH + '?')) return sendHealth(res);
    const form = normalizeTarget(req);
    if (form !== 'origin') return form === 'asterisk' ? sendOptions(res, ALLOW) : sendError(res, 400, form);
    const r = route(req);
    if (r instanceof ThawError) {
      if (table.closing) res.shouldKeepAlive = false;
      return sendError(res, r.status, r, r.status === 503 ? 1 : undefined);
    }
    const ex: AppExchange = new Exchange(hooks, r.app, req, res, null, null);
    (res as Tagged<ServerResponse>)[kExchange] = ex;
    table.begin(r.app);
    res.on('close', onResClose);
    if (r.address !== null && r.app.sleeping === null) {
      table.markAwake(r.app, r.address);
      proxied++;
      ex.forward(upstreams.get(r.address), null);
    } else table.hold(ex);
  }

  function onSocketClose(this: Tagged<Duplex>): void {
    const ex = this[kExchange] as AppExchange;
    wsSockets.delete(this);
    if (ex.timer !== null) table.unhold(ex);
    table.end(ex.app);
  }

  function onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {}); // a reset client must not crash the router
    // Only WebSocket upgrades are tunnelled; any other offer (h2c...) is ignored (RFC 9110 7.8).
    if (!isWebSocketUpgrade(req)) return replayWithoutUpgrade(server, req, socket, head);
    const form = normalizeTarget(req);
    if (form !== 'origin') return sendSocketError(socket, 400, form === 'asterisk' ? new ThawError('INVALID_REQUEST', 'a WebSocket needs a path') : form);
    const r = route(req);
    if (r instanceof ThawError) return sendSocketError(socket, r.status, r, r.status === 503 ? 1 : undefined);
    const ex: AppExchange = new Exchange(hooks, r.app, req, null, socket, head);
    (socket as Tagged<Duplex>)[kExchange] = ex;
    wsSockets.add(socket);
    table.begin(r.app);
    socket.on('close', onSocketClose);
    if (r.address !== null && r.app.sleeping === null) {
      table.markAwake(r.app, r.address);
      proxied++;
      forwardWs(ex, r.address);
    } else table.hold(ex);
  }

  // Node checks header and request deadlines on this period: a quarter of the shortest one.
  const deadlines = [timeouts.headersMs, timeouts.requestMs].filter((ms) => ms > 0);
  const connectionsCheckingInterval = Math.max(50, Math.min(30_000, Math.floor(Math.min(...deadlines, 120_000) / 4)));
  const server = http.createServer({ connectionsCheckingInterval }, onRequest);
  server.keepAliveTimeout = timeouts.keepAliveMs;
  server.headersTimeout = timeouts.headersMs;
  server.requestTimeout = timeouts.requestMs;
  server.on('upgrade', onUpgrade);
  server.on('connect', (_req: IncomingMessage, socket: Duplex) => {
    socket.on('error', () => {});
    sendSocketError(socket, 405, new ThawError('METHOD_NOT_ALLOWED', 'CONNECT is not supported: the router is a reverse proxy'), undefined, ALLOW);
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (err.code === 'ECONNRESET' || !socket.writable) return void socket.destroy();
    // A response already under way on this socket cannot be followed by another one.
    const inFlight = (socket as { _httpMessage?: ServerResponse | null })._httpMessage;
    if (inFlight?.headersSent) return void socket.destroy();
    const make = CLIENT_ERRORS[err.code ?? ''];
    const e = make ? make() : new ThawError('INVALID_REQUEST', `malformed HTTP request (${err.code ?? err.message})`);
    sendSocketError(socket, e.status, e);
  });

  let closing: Promise<void> | null = null;
  async function doClose(): Promise<void> {
    table.close();
    const serverClosed = new Promise<void>((res) => server.close(() => res()));
    server.closeIdleConnections();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([table.drain(), new Promise<void>((res) => (timer = setTimeout(res, closeGraceMs)))]);
    clearTimeout(timer);
    server.closeAllConnections();
    for (const s of wsSockets) s.destroy();
    await upstreams.close();
    wsProxy.close();
    await serverClosed;
  }

  return {
    server,
    listen(port, host = '127.0.0.1') {
      return new Promise((resolveListen, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolveListen((server.address() as AddressInfo).port);
        });
      });
    },
    close() {
      closing ??= doClose();
      return closing;
    },
    inflight(name) {
      return table.apps.get(name)?.inflight ?? 0;
    },
    stats() {
      const apps: RouterStats['apps'] = {};
      for (const [name, app] of table.apps) apps[name] = table.appStats(app);
      return {
        inflight: table.inflight,
        held: table.held,
        proxied,
        wakes: table.wakes,
        wakeFailures: table.wakeFailures,
        sleeps: table.sleeps,
        upstreamErrors,
        apps,
      };
    },
    drain() {
      return table.drain();
    },
    quiesce(name, drainMs) {
      return table.quiesce(name, drainMs);
    },
    release(name) {
      table.release(name);
    },
    adopt(name, address, idleTimeoutS) {
      table.adopt(name, address, idleTimeoutS);
    },
  };
}
