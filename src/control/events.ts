// The control plane's event feed: what the web dashboard (src/api/ui.ts)
// streams to the browser over Server-Sent Events. Every change the store
// records is published here by observeStore(): app rows (state changes),
// wake records, seeds, node heartbeats. Events are numbered in publish order,
// `<epoch>.<seq>`, and the newest RING_SIZE are kept, so a client that
// reconnects with `Last-Event-ID` gets exactly what it missed; when that is
// no longer in the ring (or the id is of another process) it gets one
// `reset` event and reloads. Payloads are built field by field from the
// wire shapes: env values never enter the feed (the store's env methods are
// not observed at all).
import { randomBytes } from 'node:crypto';
import type { AppRow, NodeRow, SeedRow, Store, WakeRow } from '../store/types.ts';

export type FeedEventType = 'app' | 'app_deleted' | 'wake' | 'seed' | 'seed_deleted' | 'node' | 'reset';

export interface FeedEvent {
  /** `<epoch>.<seq>`: epoch names this process, seq counts up from 1. */
  id: string;
  type: FeedEventType;
  /** JSON-safe payload (snake_case, like the control API). */
  data: Record<string, unknown>;
}

export type FeedListener = (e: FeedEvent) => void;

export const RING_SIZE = 1000;

export class EventFeed {
  readonly epoch = randomBytes(4).toString('hex');
  private seq = 0;
  private readonly ring: FeedEvent[] = [];
  private readonly listeners = new Set<FeedListener>();

  constructor(private readonly size = RING_SIZE) {}

  /** Number an event, keep it in the ring and hand it to every subscriber (in publish order). */
  publish(type: Exclude<FeedEventType, 'reset'>, data: Record<string, unknown>): FeedEvent {
    const e: FeedEvent = { id: `${this.epoch}.${++this.seq}`, type, data };
    this.ring.push(e);
    if (this.ring.length > this.size) this.ring.shift();
    for (const l of this.listeners) {
      try {
        l(e);
      } catch {
        // a broken subscriber must not stop the others
      }
    }
    return e;
  }

  /** The id of the newest event ('' before the first). */
  get lastId(): string {
    return this.seq ? `${this.epoch}.${this.seq}` : '';
  }

  /**
   * Subscribe. With `lastEventId` (the SSE `Last-Event-ID` header) the events
   * after it are replayed first, synchronously; an id this feed cannot resume
   * from yields one `reset` event instead. Returns the unsubscribe function.
   */
  subscribe(fn: FeedListener, lastEventId?: string | null): () => void {
    if (lastEventId) for (const e of this.since(lastEventId)) fn(e);
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Events after `lastEventId`, or `[reset]` when they are not all in the ring. */
  since(lastEventId: string): FeedEvent[] {
    const m = /^([0-9a-f]+)\.(\d+)$/.exec(lastEventId.trim());
    const reset: FeedEvent[] = [{ id: this.lastId, type: 'reset', data: { reason: 'missed events are no longer available; reload' } }];
    if (!m || m[1] !== this.epoch) return reset;
    const n = Number(m[2]);
    if (n > this.seq) return reset;
    const first = this.seq - this.ring.length + 1; // seq of ring[0]
    if (n + 1 < first) return reset;
    return this.ring.slice(n + 1 - first);
  }

  get subscribers(): number {
    return this.listeners.size;
  }
}

// ---- payloads: the wire shapes, field by field ------------------------------------

/** How app, wake and seed records look on the wire: the API's own serializers (src/api/schemas.ts), passed in by the composition root so imports point down and the feed cannot drift from the API. */
export interface EventPayloads {
  app(a: AppRow): { [k: string]: unknown };
  wake(w: WakeRow): { [k: string]: unknown };
  seed(s: SeedRow): { [k: string]: unknown };
}

export function nodeEvent(n: NodeRow): Record<string, unknown> {
  return { name: n.name, capacity: n.capacity, running: n.running, seeds: n.seeds.length, last_heartbeat_at: n.heartbeatAt };
}

/**
 * A Store that publishes every change it records to `feed` (after the write
 * succeeded). Reads and the env methods pass through untouched.
 */
export function observeStore(store: Store, feed: EventFeed, payloads: EventPayloads): Store {
  const pubApp = (a: AppRow) => {
    feed.publish('app', payloads.app(a));
    return a;
  };
  const pubSeed = async (id: string) => {
    const s = (await store.listSeeds()).find((x) => x.id === id);
    if (s) feed.publish('seed', payloads.seed(s));
  };
  const overrides: Partial<Store> = {
    createApp: async (a: Parameters<Store['createApp']>[0]) => pubApp(await store.createApp(a)),
    transition: async (...args: Parameters<Store['transition']>) => pubApp(await store.transition(...args)),
    updateApp: async (...args: Parameters<Store['updateApp']>) => pubApp(await store.updateApp(...args)),
    deleteApp: async (name: string) => {
      await store.deleteApp(name);
      feed.publish('app_deleted', { name });
    },
    addWake: async (w: WakeRow) => {
      await store.addWake(w);
      feed.publish('wake', payloads.wake(w));
    },
    setWakeFirstByte: async (id: string, ms: number) => {
      const w = await store.setWakeFirstByte(id, ms);
      if (w) feed.publish('wake', payloads.wake(w));
      return w;
    },
    putSeed: async (s: SeedRow) => {
      await store.putSeed(s);
      feed.publish('seed', payloads.seed(s));
    },
    markSeedReplicated: async (id: string, bytes: number) => {
      await store.markSeedReplicated(id, bytes);
      await pubSeed(id);
    },
    touchSeed: async (id: string, at: string) => {
      await store.touchSeed(id, at);
      await pubSeed(id);
    },
    deleteSeed: async (id: string) => {
      await store.deleteSeed(id);
      feed.publish('seed_deleted', { id });
    },
    upsertNode: async (n: NodeRow) => {
      await store.upsertNode(n);
      feed.publish('node', nodeEvent(n));
    },
  };
  // Everything else goes to the real store, bound to it.
  return new Proxy(store, {
    get(target, key, receiver) {
      if (typeof key === 'string' && key in overrides) return overrides[key as keyof Store];
      const v = Reflect.get(target, key, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
