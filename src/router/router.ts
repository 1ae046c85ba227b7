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
import { sendError, sendHealth, sendSocketError } from './reply.ts';
import { Exchange, Upstreams, kExchange, originOf, type ExchangeHooks, type Tagged } from './upstream.ts';
import type { Address, RouterOptions, RouterStats } from './types.ts';

export type { AppDirectory, RouterOptions, RouterStats, WakeResult } from './types.ts';

export interface Router {
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
  const upstreams = new Upstreams();
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
      const timeout = code === 'UND_ERR_HEADERS_TIMEOUT';
      const e = timeout
        ? new ThawError('VM_TIMEOUT', `app "${app}" did not answer in time`, { details: { app } })
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
    return { app: table.get(name, entry.idleTimeoutS), address: entry.address };
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

  const server = http.createServer(onRequest);
  server.on('upgrade', onUpgrade);
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (err.code === 'ECONNRESET' || !socket.writable) return void socket.destroy();
    socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
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
    adopt(name, address, idleTimeoutS) {
      table.adopt(name, address, idleTimeoutS);
    },
  };
}
