// A node agent's Prometheus metrics: seed transfers (pack+upload, pull+unpack:
// each one streamed pipeline) with bytes, counts and durations, running VMs,
// the seed cache's size, and wake admission (slots, running, queued, waits). Served at the node's /metrics; `thaw up` merges its
// local node's into the control plane's /metrics.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export type Direction = 'upload' | 'pull';

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly bytes = new Counter({
    name: 'thaw_node_seed_transfer_bytes_total',
    help: 'Compressed seed bytes moved to (upload) or from (pull) object storage',
    labelNames: ['direction'],
    registers: [this.registry],
  });
  private readonly transfers = new Counter({
    name: 'thaw_node_seed_transfers_total',
    help: 'Seed transfers by direction and result',
    labelNames: ['direction', 'result'],
    registers: [this.registry],
  });
  private readonly seconds = new Histogram({
    name: 'thaw_node_seed_transfer_seconds',
    help: 'Duration of a seed transfer (pack+upload or pull+unpack+verify)',
    labelNames: ['direction'],
    buckets: [0.5, 1, 2, 4, 8, 16, 32, 64, 128],
    registers: [this.registry],
  });
  readonly runningVms = new Gauge({ name: 'thaw_node_running_vms', help: 'VMs running on this node', registers: [this.registry] });
  readonly cacheBytes = new Gauge({ name: 'thaw_node_seed_cache_bytes', help: 'Allocated bytes of seeds in this node\'s cache', registers: [this.registry] });
  readonly wakeSlots = new Gauge({ name: 'thaw_node_wake_slots', help: 'Most wakes this node runs at once (--max-concurrent-wakes)', registers: [this.registry] });
  readonly wakesRunning = new Gauge({ name: 'thaw_node_wakes_running', help: 'Wakes running on this node now', registers: [this.registry] });
  readonly wakesQueued = new Gauge({ name: 'thaw_node_wakes_queued', help: 'Wakes waiting for an admission slot on this node now', registers: [this.registry] });
  readonly wakeQueueSeconds = new Histogram({
    name: 'thaw_node_wake_queue_seconds',
    help: 'Time a wake waited for an admission slot (0 when admitted at once)',
    buckets: [0, 0.1, 0.5, 1, 2, 4, 8, 16, 32, 64],
    registers: [this.registry],
  });
  readonly wakesDropped = new Counter({ name: 'thaw_node_wakes_dropped_total', help: 'Queued wakes dropped before they started (nobody waited, or shutdown)', registers: [this.registry] });

  /** A progress callback (cumulative bytes) that feeds the byte counter and logs every `logEvery` bytes. */
  progress(direction: Direction, log: (bytes: number) => void, logEvery = 64 * 1024 * 1024): (bytes: number) => void {
    let seen = 0;
    let next = logEvery;
    return (bytes) => {
      if (bytes > seen) this.bytes.inc({ direction }, bytes - seen);
      seen = bytes;
      if (bytes >= next) {
        log(bytes);
        next = (Math.floor(bytes / logEvery) + 1) * logEvery;
      }
    };
  }

  done(direction: Direction, ok: boolean, ms: number): void {
    this.transfers.inc({ direction, result: ok ? 'ok' : 'error' });
    if (ok) this.seconds.observe({ direction }, ms / 1000);
  }
}
