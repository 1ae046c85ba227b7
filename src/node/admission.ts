// Admission control of wakes on one node: at most `limit` wakes (thaws or cold
// boots) run at once; further wakes wait in a FIFO queue. Under TCG a wake is
// CPU-bound (QEMU re-translating guest code), so wakes beyond the node's cores
// only slow every wake down and push per-call deadlines toward failure; queued,
// they start one after another at full speed. A wake whose caller gives up
// while it is still queued (AbortSignal) leaves the queue: it never started, so
// nothing is undone and its seed is kept.
import os from 'node:os';
import { ThawError } from '../errors.ts';

/** A slot held by a running wake. */
export interface Ticket {
  /** How long the wake waited in the queue (ms, 0 when admitted at once). */
  readonly queuedMs: number;
  /** Give the slot to the next queued wake. Idempotent. */
  release(): void;
}

export interface AdmissionStats {
  limit: number;
  running: number;
  queued: number;
}

interface Waiter {
  key: string;
  since: number;
  admit: (t: Ticket) => void;
  reject: (e: Error) => void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

/**
 * The default number of concurrent wakes: one per CPU the process may use.
 * Measured on a 2-core TCG host (docs/BENCHMARKS.md, burst): K = cores gives
 * the lowest total time of a burst with every wake a thaw.
 */
export function defaultWakeSlots(cpus = os.availableParallelism()): number {
  return Math.max(1, cpus);
}

export class Admission {
  private running = 0;
  private readonly queue: Waiter[] = [];
  private readonly keys = new Map<string, 'queued' | 'running'>();
  private closed: ThawError | null = null;
  /** Told the queue wait of every admitted wake (ms). */
  onAdmit: (queuedMs: number) => void = () => {};

  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new ThawError('INVALID_REQUEST', `--max-concurrent-wakes must be a positive integer, got ${limit}`);
  }

  stats(): AdmissionStats {
    return { limit: this.limit, running: this.running, queued: this.queue.length };
  }

  /** 'queued' or 'running' for a wake of `key` (an app) that holds or waits for a slot, else null. */
  state(key: string): 'queued' | 'running' | null {
    return this.keys.get(key) ?? null;
  }

  /** Keys waiting, oldest first. */
  queuedKeys(): string[] {
    return this.queue.map((w) => w.key);
  }

  /**
   * Wait for a slot (FIFO). Rejects with WAKE_CANCELLED when `signal` aborts
   * while queued, SHUTTING_DOWN after close(). A wake admitted at once is not
   * delayed at all (no timer, no extra turn of the event loop beyond the promise).
   */
  acquire(key: string, signal?: AbortSignal): Promise<Ticket> {
    if (this.closed) return Promise.reject(this.closed);
    if (signal?.aborted) return Promise.reject(cancelled(key, 0));
    if (this.running < this.limit && this.queue.length === 0) return Promise.resolve(this.admit(key, 0));
    return new Promise<Ticket>((resolve, reject) => {
      const w: Waiter = {
        key,
        since: performance.now(),
        admit: resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.queue.indexOf(w);
          if (i < 0) return;
          this.queue.splice(i, 1);
          this.keys.delete(key);
          reject(cancelled(key, Math.round(performance.now() - w.since)));
        },
      };
      signal?.addEventListener('abort', w.onAbort, { once: true });
      this.queue.push(w);
      this.keys.set(key, 'queued');
    });
  }

  private admit(key: string, queuedMs: number): Ticket {
    this.running++;
    this.keys.set(key, 'running');
    this.onAdmit(queuedMs);
    let released = false;
    return {
      queuedMs,
      release: () => {
        if (released) return;
        released = true;
        this.running--;
        if (this.keys.get(key) === 'running') this.keys.delete(key);
        this.next();
      },
    };
  }

  private next(): void {
    while (this.running < this.limit && this.queue.length > 0) {
      const w = this.queue.shift()!;
      w.signal?.removeEventListener('abort', w.onAbort);
      w.admit(this.admit(w.key, Math.round(performance.now() - w.since)));
    }
  }

  /** Refuse new wakes and drop the queued ones (node shutdown); running wakes finish or are stopped by their owner. */
  close(): void {
    this.closed = new ThawError('SHUTTING_DOWN', 'the node is shutting down');
    for (const w of this.queue.splice(0)) {
      w.signal?.removeEventListener('abort', w.onAbort);
      this.keys.delete(w.key);
      w.reject(new ThawError('SHUTTING_DOWN', 'the node is shutting down', { details: { app: w.key, queued_ms: Math.round(performance.now() - w.since) } }));
    }
  }
}

function cancelled(key: string, queuedMs: number): ThawError {
  return new ThawError('WAKE_CANCELLED', `the queued wake of ${key} was dropped after ${queuedMs} ms in the queue: nobody waits for it any more`, { details: { app: key, queued_ms: queuedMs } });
}
