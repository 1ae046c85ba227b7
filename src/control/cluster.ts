// The control plane's view of its nodes and the scheduler. Nodes join by
// heartbeat (`thaw node`) or are added in-process (`thaw up`'s local node). A
// remote node that misses heartbeats for `downAfterMs` is marked down: its apps
// count as asleep and wake elsewhere (the node stops its own VMs once it loses
// the control plane, so an app never runs twice).
import type { Logger } from 'pino';
import { ThawError } from '../errors.ts';
import { crossesNetwork, plainHttpWarning } from '../http/tls.ts';
import { RemoteNode } from '../node/client.ts';
import type { InProcessNode, NodeApi } from '../node/types.ts';
import type { Store } from '../store/types.ts';
import type { NodeEvent, NodeInfo, NodeStatus } from '../wire/node.ts';

export class Member {
  state: 'up' | 'down' = 'up';
  /** The node said it is shutting down: no new wakes go to it (until it joins again). */
  draining = false;
  lastSeen = Date.now();
  capacity: number;
  /** The certificate fingerprint the node reported at join (pinned for its URL). */
  fingerprint: string | undefined;
  /** app -> vmId, as last reported (remote) and as changed by the control plane since. */
  readonly running = new Map<string, string>();
  readonly seeds = new Set<string>();
  /** Wakes the control plane has sent to this node and not seen finish (running or queued there). */
  wakesInFlight = 0;
  /** Most wakes the node runs at once, as last reported (remote nodes). */
  reportedWakeSlots: number | null = null;
  /** Apps whose wakes wait in the node's queue, as last reported (remote nodes). */
  reportedQueued = new Set<string>();

  constructor(
    readonly name: string,
    readonly url: string,
    readonly api: NodeApi,
    readonly agent: InProcessNode | null,
  ) {
    this.capacity = agent?.capacity ?? 0;
  }

  get local(): boolean {
    return this.agent !== null;
  }

  hasSeed(seedId: string | null): boolean {
    if (!seedId) return false;
    return this.agent ? this.agent.hasSeed(seedId) : this.seeds.has(seedId);
  }

  /** VMs it runs plus wakes on their way (each becomes a VM). */
  load(): number {
    return (this.agent ? this.agent.runningCount() : this.running.size) + this.wakesInFlight;
  }

  /** Most wakes at once (admission control); Infinity when the node does not say. */
  wakeSlots(): number {
    return this.agent?.wakeSlots?.() ?? this.reportedWakeSlots ?? Infinity;
  }

  /** A further wake would wait in this node's queue. */
  busy(): boolean {
    return this.wakesInFlight >= this.wakeSlots();
  }

  /** The app's wake waits in this node's admission queue (not started yet). */
  queued(app: string): boolean {
    return this.agent?.wakeState ? this.agent.wakeState(app) === 'queued' : this.reportedQueued.has(app);
  }

  seedCount(): number {
    return this.agent ? this.agent.seedCount() : this.seeds.size;
  }
}

export interface Placement {
  member: Member;
  /** Why this node: goes into the wake record. */
  reason: string;
}

export interface ClusterOptions {
  store: Store;
  /** Cluster token: nodes and the control plane authenticate with it both ways. */
  token: string;
  log: Logger;
  /** A remote node silent this long is down. */
  downAfterMs: number;
  /** PEM of a CA every https:// node's certificate must chain to; default: pin the fingerprint a node reports at join. */
  nodeCa?: string;
  /** Check that a joining node answers at its URL (default true). */
  probeOnJoin?: boolean;
}

export class Cluster {
  private readonly members = new Map<string, Member>();
  private timer: NodeJS.Timeout | null = null;
  /** Node events (app exits, evictions). */
  onEvent: (node: string, e: NodeEvent) => void = () => {};
  /** A node was marked down. */
  onDown: (node: string) => Promise<void> = async () => {};

  constructor(private readonly o: ClusterOptions) {}

  addLocal(agent: InProcessNode): Member {
    const m = new Member(agent.name, 'in-process', agent, agent);
    agent.onEvent = (e) => this.onEvent(agent.name, e);
    this.members.set(agent.name, m);
    return m;
  }

  start(): void {
    this.timer = setInterval(() => void this.sweep(), Math.max(200, Math.floor(this.o.downAfterMs / 4)));
    this.timer.unref();
  }

  /** A heartbeat from a remote node: (re)join, refresh its report, deliver its events. */
  async heartbeat(st: NodeStatus): Promise<Member> {
    let m = this.members.get(st.name);
    if (m?.local) throw new ThawError('INVALID_REQUEST', `node name ${st.name} is the control plane's own node; pick another --name`);
    const moved = m !== undefined && (m.url !== st.url || m.fingerprint !== st.tlsFingerprint);
    if (m && moved && m.state === 'up' && Date.now() - m.lastSeen < this.o.downAfterMs) {
      // Two live nodes with one name would take turns owning it. A restarted node (new port) gets in once the old entry times out.
      throw new ThawError('INVALID_REQUEST', `node name ${st.name} is in use by ${m.url}; pick another --name (or wait ${this.o.downAfterMs} ms if that node was restarted)`);
    }
    if (!m || moved) {
      m = await this.join(st, m);
    } else if (m.state === 'down') {
      this.o.log.info({ node: st.name }, 'node is back');
    }
    m.state = 'up';
    m.lastSeen = Date.now();
    m.capacity = st.capacity;
    m.running.clear();
    for (const r of st.running) m.running.set(r.app, r.vmId);
    m.seeds.clear();
    for (const s of st.seeds) m.seeds.add(s);
    m.reportedWakeSlots = st.wakes?.limit ?? null;
    m.reportedQueued = new Set(st.wakes?.queuedApps ?? []);
    for (const e of st.events) this.onEvent(st.name, e);
    if (st.leaving) await this.markDown(st.name, 'node shut down');
    await this.o.store.upsertNode({ name: st.name, url: st.url, capacity: st.capacity, running: st.running.length, seeds: st.seeds, heartbeatAt: new Date().toISOString() });
    return m;
  }

  /** A new node (or one at a new URL or certificate): reachable at its URL and, over TLS, verified; else NODE_ADVERTISE_UNREACHABLE. */
  private async join(st: NodeStatus, old: Member | undefined): Promise<Member> {
    const trust = this.o.nodeCa ? { ca: this.o.nodeCa } : st.tlsFingerprint ? { fingerprint: st.tlsFingerprint } : {};
    const api = new RemoteNode(st.name, st.url, this.o.token, trust);
    if (this.o.probeOnJoin !== false) {
      try {
        await api.probe();
      } catch (err) {
        await api.close();
        this.o.log.warn({ node: st.name, url: st.url, err: (err as Error).message }, 'node refused at join');
        throw err;
      }
    }
    if (old) void old.api.close();
    const m = new Member(st.name, st.url, api, null);
    m.fingerprint = st.tlsFingerprint;
    this.members.set(st.name, m);
    if (new URL(st.url).protocol === 'http:' && crossesNetwork(st.url)) this.o.log.warn({ node: st.name }, plainHttpWarning(`node ${st.name} at`, st.url));
    this.o.log.info({ node: st.name, url: st.url, tls: st.url.startsWith('https:') ? (this.o.nodeCa ? 'cluster CA' : 'pinned') : 'off' }, 'node joined');
    return m;
  }

  get(name: string | null): Member | undefined {
    return name ? this.members.get(name) : undefined;
  }

  all(): Member[] {
    return [...this.members.values()];
  }

  live(): Member[] {
    return this.all().filter((m) => m.state === 'up');
  }

  holders(seedId: string): Member[] {
    return this.live().filter((m) => m.hasSeed(seedId));
  }

  /**
   * Where a wake goes: a live node with room (running VMs + wakes in flight,
   * queued ones included, under its capacity), preferring one that holds the
   * seed and has a free wake slot; when every holder is busy (its wakes
   * queue), a node with a free slot that can pull the seed (`canPull`: it is
   * replicated); else the holder with the fewest wakes queued. `pinned` (an
   * app that must stay on a node) waits in that node's queue. Among equals the
   * least loaded, then by name (deterministic).
   */
  pick(seedId: string | null, exclude: ReadonlySet<string> = new Set(), opts: { canPull?: boolean; pinned?: string } = {}): Placement | null {
    const open = this.live().filter((m) => !m.draining && !exclude.has(m.name) && m.load() < m.capacity && (!opts.pinned || m.name === opts.pinned));
    if (!open.length) return null;
    const byLoad = (a: Member, b: Member) => a.load() - b.load() || a.name.localeCompare(b.name);
    const byQueue = (a: Member, b: Member) => a.wakesInFlight - a.wakeSlots() - (b.wakesInFlight - b.wakeSlots()) || byLoad(a, b);
    const holders = seedId ? open.filter((m) => m.hasSeed(seedId)) : [];
    const free = holders.filter((m) => !m.busy()).sort(byLoad);
    if (free.length) return { member: free[0]!, reason: `${free[0]!.name} holds seed ${seedId}` };
    if (holders.length && opts.canPull) {
      const puller = open.filter((m) => !m.busy() && !m.hasSeed(seedId)).sort(byLoad)[0];
      if (puller) return { member: puller, reason: `every holder of seed ${seedId} is busy (wakes queue); ${puller.name} has a free wake slot and pulls it` };
    }
    if (holders.length) {
      const h = holders.sort(byQueue)[0]!;
      return { member: h, reason: `${h.name} holds seed ${seedId}; busy, the wake queues there` };
    }
    const m = [...open].sort((a, b) => Number(a.busy()) - Number(b.busy()) || byLoad(a, b))[0]!;
    const why = seedId ? `no live node with room holds seed ${seedId}; ${m.name} pulls it` : `no seed; ${m.name} is the least loaded`;
    return { member: m, reason: m.busy() ? `${why} (busy: the wake queues there)` : why };
  }

  /** Mark nodes down whose heartbeats stopped. */
  async sweep(now = Date.now()): Promise<string[]> {
    const down: string[] = [];
    for (const m of this.members.values()) {
      if (m.local || m.state === 'down' || now - m.lastSeen < this.o.downAfterMs) continue;
      down.push(m.name);
      await this.markDown(m.name, `no heartbeat for ${now - m.lastSeen} ms`);
    }
    return down;
  }

  /** Take a node out of scheduling (missed heartbeats, or it broke off a request). */
  async markDown(name: string, why: string): Promise<void> {
    const m = this.members.get(name);
    if (!m || m.local || m.state === 'down') return;
    m.state = 'down';
    m.running.clear();
    this.o.log.warn({ node: name, why }, 'node marked down; its apps count as asleep');
    await this.onDown(name).catch((err) => this.o.log.error({ node: name, err }, 'moving apps off a down node failed'));
  }

  list(): NodeInfo[] {
    return this.all().sort((a, b) => a.name.localeCompare(b.name)).map((m) => ({
      name: m.name,
      url: m.url,
      state: m.state,
      local: m.local,
      capacity: m.capacity,
      running: m.agent ? m.agent.runningCount() : m.running.size,
      seeds: m.seedCount(),
      last_heartbeat_at: m.local ? null : new Date(m.lastSeen).toISOString(),
    }));
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await Promise.all(this.all().filter((m) => !m.local).map((m) => m.api.close().catch(() => {})));
  }
}
