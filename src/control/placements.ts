// Which VM serves which app right now (node, VM id, address), and the router's
// view of it (address or null, idle timeout), kept in step with every write.
// Lives in the control plane's memory: after a restart every app is asleep.
import type { Logger } from 'pino';
import { asThawError } from '../errors.ts';
import type { AppRow } from '../store/types.ts';
import type { Address } from '../wire/node.ts';
import type { Cluster } from './cluster.ts';

export interface Placed {
  node: string;
  vmId: string;
  address: Address;
  /** When the control plane placed it (Date.now()). */
  at?: number;
}

export class Placements {
  private readonly placed = new Map<string, Placed>();
  private readonly routes = new Map<string, { address: Address | null; idleTimeoutS: number; wakeTimeoutS: number | null }>();

  constructor(private readonly cluster: Cluster, private readonly log: Logger) {}

  get(name: string): Placed | undefined {
    return this.placed.get(name);
  }

  has(name: string): boolean {
    return this.placed.has(name);
  }

  set(name: string, p: Placed): void {
    this.placed.set(name, { ...p, at: p.at ?? Date.now() });
    this.cluster.get(p.node)?.running.set(name, p.vmId);
  }

  /** Apps placed on `node`. */
  on(node: string): [string, Placed][] {
    return [...this.placed].filter(([, p]) => p.node === node);
  }

  /** Forget the placement (the VM is gone or no longer ours). */
  delete(name: string): void {
    const p = this.placed.get(name);
    if (p) this.cluster.get(p.node)?.running.delete(name);
    this.placed.delete(name);
  }

  /** Refresh the router's entry from an app row (null: leave it). */
  route(a: AppRow | null): void {
    if (!a) return;
    const pl = this.placed.get(a.name);
    this.routes.set(a.name, { address: a.state === 'running' && pl ? pl.address : null, idleTimeoutS: a.idleTimeoutS, wakeTimeoutS: a.wakeTimeoutS ?? null });
  }

  unroute(name: string): void {
    this.routes.delete(name);
  }

  lookup(name: string) {
    return this.routes.get(name) ?? null;
  }

  /** Delete the app's VM wherever it runs (no bake). */
  async stop(name: string): Promise<void> {
    const pl = this.placed.get(name);
    if (!pl) return;
    this.delete(name);
    const m = this.cluster.get(pl.node);
    if (m && m.state === 'up') await m.api.stop(name, pl.vmId).catch((err) => this.log.warn({ app: name, node: pl.node, err: asThawError(err).message }, 'could not stop VM'));
  }
}
