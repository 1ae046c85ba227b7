// The router's view of the rest of Thaw. The router depends only on this
// interface: the control plane implements it, tests fake it.
import type { Logger } from 'pino';

export interface Address {
  host: string;
  port: number;
}

export interface WakeResult {
  address: { host: string; port: number };
  bootMode: 'snapshot' | 'cold';
  wallMs: number;
  wakeId: string;
  /** performance.now() when the router asked for this wake (set by the router). */
  startedAt?: number;
}

export interface AppDirectory {
  /**
   * null when no such app. `address` is set when the app is running right now. `wakeTimeoutS`:
   * how long a request is held for this app's wake (null/absent: the router's wakeTimeoutMs).
   */
  lookup(name: string): { address: { host: string; port: number } | null; idleTimeoutS: number; wakeTimeoutS?: number | null } | null;
  /**
   * Wake an asleep app; resolves when it is ready to serve. Rejects with a ThawError (its toJSON goes in the 502 body,
   * 503 + Retry-After for a 503 code; details may include the wake record). `signal` aborts once no request waits any
   * more: a wake still queued on its node is dropped.
   */
  wake(name: string, opts?: { signal?: AbortSignal }): Promise<WakeResult>;
  /** The app's wake waits in its node's admission queue (has not started): a hold timeout is then NODE_BUSY. */
  wakeQueued?(name: string): boolean;
  /** Called when the app had no in-flight request for its idle timeout (`trigger` 'idle'). */
  sleep(name: string, trigger?: 'idle'): Promise<unknown>;
  /** The first byte of the app's answer after a wake the router started: `ms` since the router asked for the wake. */
  firstByte?(name: string, wakeId: string, ms: number): Promise<unknown>;
}

/** Proxy timeouts, in ms; 0 turns one off. See docs/ROUTER.md. */
export interface RouterTimeouts {
  /** An idle client connection is kept this long for its next request. Default 75000 (longer than a 60 s load-balancer idle). */
  keepAliveMs: number;
  /** A client must send a request's complete headers within this, else 408. Default 60000. */
  headersMs: number;
  /** A client must send its whole request (headers and body) within this, else 408. Default 0: uploads may take as long as they take. */
  requestMs: number;
  /** The app must send response headers within this after the request reached it, else 504. Default 300000. */
  upstreamHeadersMs: number;
  /** Longest pause between two chunks of an app's response body before it is cut. Default 0: streams (SSE) may pause. */
  upstreamBodyMs: number;
}

export const DEFAULT_TIMEOUTS: RouterTimeouts = { keepAliveMs: 75_000, headersMs: 60_000, requestMs: 0, upstreamHeadersMs: 300_000, upstreamBodyMs: 0 };

/** What a sleep found in flight when it stopped routing to the app. */
export interface DrainResult {
  /** Time spent waiting for in-flight requests to finish. */
  drainMs: number;
  /** Requests (and WebSockets) still in flight when the drain time ran out; they are cut with the VM. */
  cut: number;
}

/**
 * How the control plane tells the router that an app is going to sleep, whatever the trigger:
 * `quiesce` stops routing to its VM (new requests are held for the next wake) and waits for
 * in-flight requests up to `drainMs`; `release` says the VM is gone: held requests wake it anew.
 */
export interface RequestGate {
  quiesce(name: string, drainMs: number): Promise<DrainResult>;
  release(name: string): void;
}

export interface RouterOptions {
  dir: AppDirectory;
  /** Host suffix after the app name; `NAME.<suffix>`. Default `localhost`. */
  suffix?: string;
  /** Held (waiting-for-wake) requests per app before 503 TOO_MANY_HELD. Default 1000. */
  maxHeld?: number;
  /** How long one request is held for a wake before 503 WAKE_TIMEOUT. Default 60000. */
  wakeTimeoutMs?: number;
  /** How long close() waits for in-flight requests before cutting connections. Default 5000. */
  closeGraceMs?: number;
  /** Proxy timeouts; unset fields take DEFAULT_TIMEOUTS. */
  timeouts?: Partial<RouterTimeouts>;
  log?: Logger;
}

export interface AppStats {
  inflight: number;
  held: number;
  state: 'awake' | 'asleep' | 'waking' | 'sleeping';
  wakes: number;
  sleeps: number;
}

export interface RouterStats {
  inflight: number;
  held: number;
  proxied: number;
  wakes: number;
  wakeFailures: number;
  sleeps: number;
  upstreamErrors: number;
  apps: Record<string, AppStats>;
}
