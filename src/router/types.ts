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
}

export interface AppDirectory {
  /** null when no such app. `address` is set when the app is running right now. */
  lookup(name: string): { address: { host: string; port: number } | null; idleTimeoutS: number } | null;
  /**
   * Wake an asleep app; resolves when it is ready to serve. Rejects with a ThawError (its toJSON goes in the 502 body,
   * 503 + Retry-After for a 503 code; details may include the wake record). `signal` aborts once no request waits any
   * more: a wake still queued on its node is dropped.
   */
  wake(name: string, opts?: { signal?: AbortSignal }): Promise<WakeResult>;
  /** The app's wake waits in its node's admission queue (has not started): a hold timeout is then NODE_BUSY. */
  wakeQueued?(name: string): boolean;
  /** Called when the app had no in-flight request for its idle timeout. */
  sleep(name: string): Promise<unknown>;
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
