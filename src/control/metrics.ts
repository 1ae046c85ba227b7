// Prometheus metrics (prom-client): wake duration by boot mode, wakes by
// fallback reason, apps by state, seed bytes, nodes by state, seed uploads.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { STATES } from '../state.ts';
import type { AppRow, SeedRow, WakeRow } from '../store/types.ts';
import type { NodeInfo } from '../wire/node.ts';

export class Metrics {
  readonly registry = new Registry();
  private readonly wakeSeconds = new Histogram({
    name: 'thaw_wake_duration_seconds',
    help: 'Wall time of a wake, request to app ready, by boot mode',
    labelNames: ['boot_mode'],
    buckets: [0.25, 0.5, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60],
    registers: [this.registry],
  });
  private readonly wakes = new Counter({
    name: 'thaw_wakes_total',
    help: 'Wakes by boot mode and fallback reason code (none when the thaw worked)',
    labelNames: ['boot_mode', 'fallback_reason'],
    registers: [this.registry],
  });
  private readonly wakeFailures = new Counter({ name: 'thaw_wake_failures_total', help: 'Wakes where neither thaw nor cold boot worked', registers: [this.registry] });
  private readonly apps = new Gauge({ name: 'thaw_apps', help: 'Apps by state', labelNames: ['state'], registers: [this.registry] });
  private readonly seedBytes = new Gauge({ name: 'thaw_seed_bytes', help: 'Bytes of current seeds (apparent, allocated, compressed in object storage)', labelNames: ['kind'], registers: [this.registry] });
  private readonly seeds = new Gauge({ name: 'thaw_seeds', help: 'Current seeds by replication state', labelNames: ['replicated'], registers: [this.registry] });
  private readonly nodes = new Gauge({ name: 'thaw_nodes', help: 'Node agents by state', labelNames: ['state'], registers: [this.registry] });
  private readonly uploads = new Gauge({ name: 'thaw_seed_uploads', help: 'Seed uploads since start, by result', labelNames: ['result'], registers: [this.registry] });

  wake(w: WakeRow): void {
    this.wakeSeconds.observe({ boot_mode: w.bootMode }, w.wallMs / 1000);
    const reason = w.fallbackReason ? (w.fallbackReason.split(':')[0] ?? 'unknown') : 'none';
    this.wakes.inc({ boot_mode: w.bootMode, fallback_reason: reason });
  }

  wakeFailed(): void {
    this.wakeFailures.inc();
  }

  async render(apps: AppRow[], seeds: SeedRow[], nodes: NodeInfo[] = [], uploads = { uploads: 0, uploadFailures: 0 }): Promise<{ contentType: string; body: string }> {
    for (const s of STATES) this.apps.set({ state: s }, apps.filter((a) => a.state === s).length);
    this.seedBytes.set({ kind: 'apparent' }, seeds.reduce((n, s) => n + s.bytesApparent, 0));
    this.seedBytes.set({ kind: 'allocated' }, seeds.reduce((n, s) => n + s.bytesAllocated, 0));
    this.seedBytes.set({ kind: 'compressed' }, seeds.reduce((n, s) => n + (s.bytesCompressed ?? 0), 0));
    this.seeds.set({ replicated: 'true' }, seeds.filter((s) => s.replicated).length);
    this.seeds.set({ replicated: 'false' }, seeds.filter((s) => !s.replicated).length);
    for (const st of ['up', 'down'] as const) this.nodes.set({ state: st }, nodes.filter((n) => n.state === st).length);
    this.uploads.set({ result: 'ok' }, uploads.uploads);
    this.uploads.set({ result: 'error' }, uploads.uploadFailures);
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
