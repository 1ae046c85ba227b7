// Prometheus metrics (prom-client): wake duration by boot mode, wakes by
// fallback reason, apps by state, seed bytes.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { STATES } from '../state.ts';
import type { AppRow, SeedRow, WakeRow } from '../store/types.ts';

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
  private readonly seedBytes = new Gauge({ name: 'thaw_seed_bytes', help: 'Bytes of seeds on this host', labelNames: ['kind'], registers: [this.registry] });

  wake(w: WakeRow): void {
    this.wakeSeconds.observe({ boot_mode: w.bootMode }, w.wallMs / 1000);
    const reason = w.fallbackReason ? (w.fallbackReason.split(':')[0] ?? 'unknown') : 'none';
    this.wakes.inc({ boot_mode: w.bootMode, fallback_reason: reason });
  }

  wakeFailed(): void {
    this.wakeFailures.inc();
  }

  async render(apps: AppRow[], seeds: SeedRow[]): Promise<{ contentType: string; body: string }> {
    for (const s of STATES) this.apps.set({ state: s }, apps.filter((a) => a.state === s).length);
    this.seedBytes.set({ kind: 'apparent' }, seeds.reduce((n, s) => n + s.bytesApparent, 0));
    this.seedBytes.set({ kind: 'allocated' }, seeds.reduce((n, s) => n + s.bytesAllocated, 0));
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
