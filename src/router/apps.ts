// Per-app router state: in-flight counts, requests held for a wake (one
// single-flight wake per app), and the idle timer that puts an app to sleep.
import type { Logger } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import type { Address, AppDirectory, AppStats, DrainResult, WakeResult } from './types.ts';
import type { Exchange } from './upstream.ts';

export type AppExchange = Exchange<AppState>;

export class AppState {
  inflight = 0;
  readonly held = new Set<AppExchange>();
  waking: Promise<void> | null = null;
  /** Aborted when no held request waits for the running wake any more. */
  wakeAbort: AbortController | null = null;
  sleeping: Promise<void> | null = null;
  /** We believe a VM is serving this app (we proxied to it or woke it). */
  awake = false;
  /** Last upstream address we used; its pool is dropped when the app sleeps. */
  address: Address | null = null;
  idleMs = 0;
  /** How long a request is held for this app's wake; 0: the router's default. */
  wakeMs = 0;
  idleSince = 0;
  /** While a sleep runs: resolves `sleeping`; the address whose pool goes when it ends. */
  asleep: (() => void) | null = null;
  oldAddress: Address | null = null;
  /** Set while a sleep waits for forwarded requests to finish. */
  drained: (() => void) | null = null;
  idleTimer: NodeJS.Timeout | null = null;
  wakes = 0;
  sleeps = 0;
  constructor(readonly name: string) {}
}

/** What the table asks the router to do with exchanges it releases. */
export interface Sink {
  forward(ex: AppExchange, address: Address, wake: WakeResult): void;
  reject(ex: AppExchange, status: number, err: ThawError, retryAfterS?: number): void;
  /** sleep(name) finished: the old address is gone. */
  asleep(app: AppState, old: Address | null): void;
}

export interface TableOptions {
  maxHeld: number;
  wakeTimeoutMs: number;
  log: Logger;
}

const WAKE_RETRY_AFTER_S = 2;

/** Wake failures that mean "not now" rather than "broken": 503 with Retry-After, not 502. */
const RETRYABLE = new Set(['WAKE_TIMEOUT', 'NODE_BUSY', 'NO_NODE']);

/** The HTTP status (and Retry-After) held requests get when their wake failed with `err` (as thrown). */
export function wakeFailureStatus(err: unknown): { status: number; retryAfterS?: number } {
  const e = err as { code?: unknown; status?: unknown } | null;
  const retry = typeof e?.code === 'string' && RETRYABLE.has(e.code);
  return retry || e?.status === 503 ? { status: 503, retryAfterS: WAKE_RETRY_AFTER_S } : { status: 502 };
}

/** Requests (and WebSockets) of the app that reached its VM: in flight but not held. */
function forwarded(app: AppState): number {
  return app.inflight - app.held.size;
}

function onHeldTimeout(table: AppTable, ex: AppExchange): void {
  table.timeout(ex);
}
function onIdleTimer(table: AppTable, app: AppState): void {
  table.idle(app);
}

export class AppTable {
  readonly apps = new Map<string, AppState>();
  inflight = 0;
  held = 0;
  wakes = 0;
  wakeFailures = 0;
  sleeps = 0;
  closing = false;
  private drainWaiters: Array<() => void> = [];

  constructor(
    private readonly dir: AppDirectory,
    private readonly sink: Sink,
    private readonly opts: TableOptions,
  ) {}

  get(name: string, idleTimeoutS: number, wakeTimeoutS?: number | null): AppState {
    let app = this.apps.get(name);
    if (app === undefined) {
      app = new AppState(name);
      this.apps.set(name, app);
    }
    app.idleMs = idleTimeoutS > 0 ? idleTimeoutS * 1000 : 0;
    app.wakeMs = wakeTimeoutS != null && wakeTimeoutS > 0 ? Math.round(wakeTimeoutS * 1000) : 0;
    return app;
  }

  begin(app: AppState): void {
    app.inflight++;
    this.inflight++;
  }

  end(app: AppState): void {
    app.inflight--;
    this.inflight--;
    if (app.inflight === 0) {
      app.idleSince = performance.now();
      this.armIdle(app);
    }
    if (app.drained !== null && forwarded(app) <= 0) app.drained();
    if (this.inflight === 0 && this.drainWaiters.length > 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** The app is served at `address` right now. */
  markAwake(app: AppState, address: Address): void {
    app.awake = true;
    app.address = address;
  }

  /** Woken elsewhere (e.g. `thaw wake`): track it so it idles to zero like any other. */
  adopt(name: string, address: Address, idleTimeoutS: number): void {
    const app = this.get(name, idleTimeoutS);
    if (app.waking !== null || app.sleeping !== null) return;
    this.markAwake(app, address);
    if (app.inflight === 0) {
      app.idleSince = performance.now();
      this.armIdle(app);
    }
  }

  /** Hold `ex` until its app is awake; starts the app's one wake if none runs. */
  hold(ex: AppExchange): void {
    const app = ex.app;
    if (this.closing) return this.sink.reject(ex, 503, new ThawError('SHUTTING_DOWN', 'the router is shutting down'), 1);
    if (app.held.size >= this.opts.maxHeld) {
      const msg = `${app.held.size} requests are already waiting for app "${app.name}" to wake`;
      return this.sink.reject(ex, 503, new ThawError('TOO_MANY_HELD', msg, { details: { app: app.name } }), 1);
    }
    app.held.add(ex);
    this.held++;
    ex.timer = setTimeout(onHeldTimeout, app.wakeMs || this.opts.wakeTimeoutMs, this, ex);
    if (app.waking === null) app.waking = this.runWake(app);
  }

  /** Stop holding `ex` (its client left, or it is being answered). */
  unhold(ex: AppExchange): void {
    if (ex.timer !== null) {
      clearTimeout(ex.timer);
      ex.timer = null;
    }
    if (ex.app.held.delete(ex)) this.held--;
    // Nobody waits for the wake any more: a wake still queued on its node is dropped (seed kept).
    if (ex.app.held.size === 0) ex.app.wakeAbort?.abort();
  }

  timeout(ex: AppExchange): void {
    ex.timer = null;
    const name = ex.app.name;
    const busy = this.dir.wakeQueued?.(name) === true;
    this.unhold(ex);
    const waitMs = ex.app.wakeMs || this.opts.wakeTimeoutMs;
    const err = busy
      ? new ThawError('NODE_BUSY', `app "${name}" is still queued for a wake slot after ${waitMs} ms; its node is busy`, { details: { app: name } })
      : new ThawError('WAKE_TIMEOUT', `app "${name}" did not wake within ${waitMs} ms; it is still waking`, { details: { app: name } });
    this.sink.reject(ex, 503, err, WAKE_RETRY_AFTER_S);
  }

  private async runWake(app: AppState): Promise<void> {
    let result: WakeResult | null = null;
    let failure: ThawError | null = null;
    let thrown: unknown = null;
    try {
      // Never proxy to a VM that is being deleted: let sleep finish, then wake afresh.
      if (app.sleeping !== null) await app.sleeping;
      if (this.closing) return;
      app.wakes++;
      this.wakes++;
      const startedAt = performance.now();
      app.wakeAbort = new AbortController();
      result = { ...(await this.dir.wake(app.name, { signal: app.wakeAbort.signal })), startedAt };
    } catch (err) {
      thrown = err;
      failure = asThawError(err, 'WAKE_FAILED');
    } finally {
      app.waking = null;
      app.wakeAbort = null;
    }
    if (result !== null && app.sleeping !== null) {
      // A sleep began as this wake finished (`thaw sleep` took the app's lock first): the held
      // requests wait for it, then wake the app anew.
      if (app.held.size > 0 && app.waking === null) app.waking = this.runWake(app);
      return;
    }
    if (result !== null) {
      this.markAwake(app, result.address);
      this.opts.log.info({ app: app.name, bootMode: result.bootMode, wallMs: result.wallMs, held: app.held.size }, 'app woke');
      for (const ex of app.held) {
        this.unhold(ex);
        this.sink.forward(ex, result.address, result);
      }
    } else if (failure !== null) {
      this.wakeFailures++;
      this.opts.log.warn({ app: app.name, code: failure.code, err: failure.message, held: app.held.size }, 'wake failed');
      const { status, retryAfterS } = wakeFailureStatus(thrown);
      for (const ex of app.held) {
        this.unhold(ex);
        this.sink.reject(ex, status, failure, retryAfterS);
      }
    }
    if (app.inflight === 0) {
      app.idleSince = performance.now();
      this.armIdle(app);
    }
  }

  private armIdle(app: AppState, ms = app.idleMs): void {
    if (!app.awake || app.idleTimer !== null || this.closing || app.idleMs === 0) return;
    app.idleTimer = setTimeout(onIdleTimer, ms, this, app);
    app.idleTimer.unref();
  }

  /** The idle timer fired. In-flight requests only bump counters, so re-check here. */
  idle(app: AppState): void {
    app.idleTimer = null;
    if (this.closing || app.inflight > 0 || !app.awake || app.waking !== null || app.sleeping !== null) return;
    const rest = app.idleSince + app.idleMs - performance.now();
    if (rest > 2) return this.armIdle(app, Math.ceil(rest));
    this.startSleep(app);
  }

  private startSleep(app: AppState): void {
    this.beginSleep(app);
    this.opts.log.info({ app: app.name, idleMs: app.idleMs }, 'app idle; sleeping');
    let p: Promise<unknown>;
    try {
      p = this.dir.sleep(app.name, 'idle');
    } catch (err) {
      p = Promise.reject(err);
    }
    p.catch((err: unknown) => this.opts.log.warn({ app: app.name, err: asThawError(err).message }, 'sleep failed')).then(() => this.release(app.name));
  }

  /** From now on the app's requests are held (the next wake serves them); idempotent. */
  private beginSleep(app: AppState): void {
    if (app.sleeping !== null) return;
    if (app.idleTimer !== null) clearTimeout(app.idleTimer);
    app.idleTimer = null;
    app.awake = false;
    app.sleeps++;
    this.sleeps++;
    app.oldAddress = app.address;
    app.address = null;
    app.sleeping = new Promise<void>((resolve) => (app.asleep = resolve));
  }

  /** A sleep starts (any trigger): hold new requests, wait up to drainMs for forwarded ones to finish. */
  async quiesce(name: string, drainMs: number): Promise<DrainResult> {
    const app = this.apps.get(name) ?? this.get(name, 0);
    this.beginSleep(app);
    const t0 = performance.now();
    // A closed router has drained (or cut) everything already.
    if (forwarded(app) > 0 && drainMs > 0 && !this.closing) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          app.drained = null;
          resolve();
        };
        const timer = setTimeout(done, drainMs);
        app.drained = done;
      });
    }
    return { drainMs: Math.round(performance.now() - t0), cut: Math.max(0, forwarded(app)) };
  }

  /** The sleep is over (the VM is gone): held requests start a wake. Idempotent. */
  release(name: string): void {
    const app = this.apps.get(name);
    if (app === undefined || app.asleep === null) return;
    const resolve = app.asleep;
    const old = app.oldAddress;
    app.asleep = null;
    app.oldAddress = null;
    app.sleeping = null;
    this.sink.asleep(app, old);
    resolve();
  }

  /** Stop: answer every held request with 503 SHUTTING_DOWN and clear idle timers. */
  close(): void {
    this.closing = true;
    const err = new ThawError('SHUTTING_DOWN', 'the router is shutting down');
    for (const app of this.apps.values()) {
      if (app.idleTimer !== null) clearTimeout(app.idleTimer);
      app.idleTimer = null;
      for (const ex of app.held) {
        this.unhold(ex);
        this.sink.reject(ex, 503, err, 1);
      }
    }
  }

  /** Resolves when no request is in flight (held ones included). */
  drain(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  appStats(app: AppState): AppStats {
    const state = app.sleeping !== null ? 'sleeping' : app.waking !== null ? 'waking' : app.awake ? 'awake' : 'asleep';
    return { inflight: app.inflight, held: app.held.size, state, wakes: app.wakes, sleeps: app.sleeps };
  }
}
