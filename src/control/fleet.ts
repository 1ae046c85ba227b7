// The control plane's side of node events: heartbeats (and the VMs a node must
// stop), app exits, evictions, and nodes going down (their apps count as
// asleep and wake elsewhere).
import type { Logger } from 'pino';
import type { Store } from '../store/types.ts';
import type { HeartbeatResponse, NodeEvent, NodeStatus } from '../wire/node.ts';
import type { Cluster } from './cluster.ts';
import type { Placements } from './placements.ts';
import type { Replication } from './replication.ts';


export interface FleetOptions {
  store: Store;
  cluster: Cluster;
  placements: Placements;
  replication: Replication;
  log: Logger;
  /** A VM placed this long ago must show up in its node's heartbeats (default 10 s). */
  reportGraceMs?: number;
}

export class Fleet {
  /** Apps whose lost VM is being handled (heartbeats keep reporting it until then). */
  private readonly losing = new Set<string>();

  constructor(private readonly o: FleetOptions) {
    o.cluster.onEvent = (node, e) => void this.event(node, e).catch((err) => o.log.error({ node, err }, 'handling a node event failed'));
    o.cluster.onDown = (node) => this.down(node);
  }

  private lock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    return this.o.store.withAppLock(name, fn);
  }

  /** Record a heartbeat; answer with VMs the node runs that are placed elsewhere (stop them). */
  async heartbeat(st: NodeStatus): Promise<HeartbeatResponse> {
    const m = await this.o.cluster.heartbeat(st);
    const reported = new Set(st.running.map((r) => `${r.app}/${r.vmId}`));
    for (const [app, p] of this.o.placements.on(st.name)) {
      // The heartbeat may predate the latest placements: the control plane's own count wins.
      m.running.set(app, p.vmId);
      // Placed here a while ago but no longer run by the node (it fenced the VM, or it restarted).
      if (!reported.has(`${app}/${p.vmId}`) && Date.now() - (p.at ?? 0) > (this.o.reportGraceMs ?? 10_000)) void this.lost(app, st.name, p.vmId);
    }
    const stop: HeartbeatResponse['stop'] = [];
    for (const r of st.running) {
      const app = await this.o.store.findApp(r.app);
      if (app?.state === 'waking' || app?.state === 'sleeping') continue; // its RPC decides
      const pl = this.o.placements.get(r.app);
      if (app?.state === 'running' && pl?.node === st.name && pl.vmId === r.vmId) continue;
      stop.push(r);
    }
    if (stop.length) this.o.log.warn({ node: st.name, stop }, 'node runs VMs placed elsewhere; stopping them');
    return { stop };
  }

  private async event(node: string, e: NodeEvent): Promise<void> {
    if (e.type === 'seed_evicted') {
      this.o.cluster.get(node)?.seeds.delete(e.seedId);
      await this.o.replication.evicted(node, e.seedId);
      return;
    }
    this.o.log.warn({ app: e.app, node, code: e.code, signal: e.signal }, 'app exited; VM deleted, next request wakes it again');
    await this.lock(e.app, async () => {
      const pl = this.o.placements.get(e.app);
      if (!pl || pl.node !== node || (e.vmId && pl.vmId !== e.vmId)) return;
      await this.o.placements.stop(e.app);
      const row = await this.o.store.transition(e.app, 'running', 'failed', { vmId: null, hostPort: null, error: `app exited (code ${e.code}, signal ${e.signal})` }).catch(() => null);
      this.o.placements.route(row);
    });
  }

  /** A placed VM is gone from its node: the app is asleep and wakes (anywhere) on its next request. */
  private async lost(app: string, node: string, vmId: string): Promise<void> {
    if (this.losing.has(app)) return;
    this.losing.add(app);
    await this.lock(app, async () => {
      const pl = this.o.placements.get(app);
      if (!pl || pl.node !== node || pl.vmId !== vmId) return;
      this.o.log.warn({ app, node, vmId }, 'the VM of a running app is gone from its node; the app is asleep');
      this.o.placements.delete(app);
      const row = await this.o.store.transition(app, 'running', 'asleep', { vmId: null, hostPort: null }).catch(() => null);
      this.o.placements.route(row);
    })
      .catch((err) => this.o.log.error({ app, err }, 'could not mark a lost VM asleep'))
      .finally(() => this.losing.delete(app));
  }

  /** A node is down: its apps count as asleep and wake elsewhere on their next request. */
  private async down(node: string): Promise<void> {
    for (const a of await this.o.store.listApps()) {
      if (a.node !== node || a.state !== 'running') continue;
      await this.lock(a.name, async () => {
        const pl = this.o.placements.get(a.name);
        if (pl && pl.node !== node) return;
        this.o.placements.delete(a.name);
        const row = await this.o.store.transition(a.name, 'running', 'asleep', { vmId: null, hostPort: null }).catch(() => null);
        this.o.placements.route(row);
        this.o.log.warn({ app: a.name, node }, 'app was running on a node that is down; it wakes elsewhere');
      });
    }
  }
}
