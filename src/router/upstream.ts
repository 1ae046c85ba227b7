// Forwarding to an app: one keep-alive undici Pool per upstream address, and
// one Exchange per client request. The Exchange is the undici dispatch handler
// itself, so the hot path allocates one object plus the header map.
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { Pool, type Dispatcher } from 'undici';
import type { Address, WakeResult } from './types.ts';

/** Keep-alive connections per upstream VM (env THAW_UPSTREAM_CONNECTIONS). */
const UPSTREAM_CONNECTIONS = Number(process.env.THAW_UPSTREAM_CONNECTIONS ?? 16);

/** Headers that describe one connection, not the message (RFC 9110 7.6.1), plus ones undici refuses. */
const HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect', 'http2-settings',
]);

/** Tokens named in a Connection header (they are hop-by-hop too), or null when there are none. */
function connectionTokens(value: string | string[] | undefined): string[] | null {
  if (value === undefined || value === 'keep-alive' || value === 'close') return null;
  const out: string[] = [];
  for (const part of String(value).split(',')) {
    const t = part.trim().toLowerCase();
    if (t !== '' && t !== 'keep-alive' && t !== 'close') out.push(t);
  }
  return out.length ? out : null;
}

/** Request headers for the app: hop-by-hop removed, x-forwarded-* added (nginx style). */
export function requestHeaders(req: IncomingMessage, proto: string): Record<string, string | string[]> {
  const src = req.headers;
  const extra = connectionTokens(src.connection);
  const out: Record<string, string | string[]> = {};
  for (const k in src) {
    const v = src[k];
    if (v === undefined || HOP.has(k) || (extra !== null && extra.includes(k))) continue;
    out[k] = v;
  }
  const ip = req.socket.remoteAddress ?? '';
  const xff = src['x-forwarded-for'];
  out['x-forwarded-for'] = xff === undefined ? ip : `${String(xff)}, ${ip}`;
  if (src.host !== undefined) out['x-forwarded-host'] = src.host;
  out['x-forwarded-proto'] = proto;
  return out;
}

function stripResponseHeaders(h: IncomingHttpHeaders): void {
  const extra = connectionTokens(h.connection);
  for (const k in h) if (HOP.has(k) || (extra !== null && extra.includes(k))) delete h[k];
}

export function originOf(a: Address): string {
  return a.host.includes(':') ? `http://[${a.host}]:${a.port}` : `http://${a.host}:${a.port}`;
}

/** Keep-alive pools, one per upstream address. */
export class Upstreams {
  private readonly pools = new Map<string, Pool>();

  /** `headersMs`/`bodyMs`: undici's headersTimeout and bodyTimeout (0: none). */
  constructor(private readonly timeouts: { headersMs: number; bodyMs: number } = { headersMs: 300_000, bodyMs: 0 }) {}

  get(a: Address): Pool {
    const key = originOf(a);
    let pool = this.pools.get(key);
    if (pool === undefined) {
      // bodyTimeout 0 (the default): streaming responses (SSE, long downloads) may pause for as long as they like.
      // connections: a bounded set of keep-alive connections per VM, like nginx's upstream
      // keepalive. A burst of held requests released by a wake would otherwise open one
      // connection each through QEMU's user-mode network at once; under that burst a few
      // guest-side handshakes were seen to stall for minutes.
      pool = new Pool(key, { connections: UPSTREAM_CONNECTIONS, keepAliveTimeout: 4_000, bodyTimeout: this.timeouts.bodyMs, headersTimeout: this.timeouts.headersMs });
      this.pools.set(key, pool);
    }
    return pool;
  }

  /** Forget the pool for an address whose VM went away. */
  drop(a: Address): void {
    const key = originOf(a);
    const pool = this.pools.get(key);
    if (pool === undefined) return;
    this.pools.delete(key);
    pool.destroy().catch(() => {});
  }

  get size(): number {
    return this.pools.size;
  }

  async close(): Promise<void> {
    const all = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(all.map((p) => p.destroy().catch(() => {})));
  }
}

export interface ExchangeHooks {
  /** Upstream failed before/while answering (not called when the client left first). */
  upstreamError(ex: Exchange, err: Error): void;
  /** The response to a request that waited for a wake has started (called for each such response). */
  firstByte?(ex: Exchange, wake: WakeResult): void;
}

const CLIENT_GONE = new Error('client closed the connection');

/** One client request (or upgrade) on its way through the router. */
export class Exchange<App = unknown> implements Dispatcher.DispatchHandler {
  /** Set while the request is held for a wake. */
  timer: NodeJS.Timeout | null = null;
  wake: WakeResult | null = null;
  controller: Dispatcher.DispatchController | null = null;
  cancelled = false;
  /** The client saw the start of an upstream response (or a 101) */
  started = false;

  constructor(
    readonly hooks: ExchangeHooks,
    readonly app: App,
    readonly req: IncomingMessage,
    readonly res: ServerResponse | null,
    readonly socket: Duplex | null,
    readonly head: Buffer | null,
  ) {}

  /** Send the request to `pool`. `wake` adds the x-thaw-* headers to the response. */
  forward(pool: Pool, wake: WakeResult | null): void {
    this.wake = wake;
    const req = this.req;
    const h = req.headers;
    const cl = h['content-length'];
    const hasBody = h['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0');
    try {
      pool.dispatch(
        { path: req.url ?? '/', method: req.method ?? 'GET', headers: requestHeaders(req, 'http'), body: hasBody ? req : null },
        this,
      );
    } catch (err) {
      this.onResponseError(null, err as Error);
    }
  }

  /** The client went away: abort the upstream request if there is one. */
  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    const c = this.controller;
    if (c !== null && !c.aborted) c.abort(CLIENT_GONE);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.cancelled) controller.abort(CLIENT_GONE);
  }

  onResponseStart(controller: Dispatcher.DispatchController, status: number, headers: IncomingHttpHeaders, message?: string): void {
    if (status < 200 || this.cancelled) return;
    const res = this.res as ServerResponse;
    stripResponseHeaders(headers);
    const wake = this.wake;
    if (wake !== null) {
      headers['x-thaw-boot'] = wake.bootMode;
      headers['x-thaw-wake-ms'] = String(Math.round(wake.wallMs));
    }
    try {
      res.writeHead(status, message || undefined, headers as OutgoingHttpHeaders);
      this.started = true;
      if (wake !== null) this.hooks.firstByte?.(this, wake);
    } catch (err) {
      // e.g. an invalid header value from the app: answer 502, drop the upstream response
      this.hooks.upstreamError(this, err as Error);
      this.cancelled = true;
      controller.abort(err as Error);
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.cancelled) return;
    const res = this.res as ServerResponse;
    if (!res.write(chunk)) {
      controller.pause();
      res.once('drain', onDrain);
    }
  }

  onResponseEnd(): void {
    if (!this.cancelled) (this.res as ServerResponse).end();
  }

  onResponseError(_c: Dispatcher.DispatchController | null, err: Error): void {
    if (this.cancelled) return;
    this.hooks.upstreamError(this, err);
  }
}

/** Exchange of a response, stored on the ServerResponse for the module-level listeners. */
export const kExchange = Symbol('thaw.exchange');
export type Tagged<T> = T & { [kExchange]?: Exchange<any> };

function onDrain(this: Tagged<ServerResponse>): void {
  this[kExchange]?.controller?.resume();
}
