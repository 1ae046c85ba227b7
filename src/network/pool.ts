// A node's per-VM networks: a few namespaces are kept ready, so a thaw only
// takes one and applies its app's egress policy (one `nft` call that runs
// while QEMU starts). A released namespace is destroyed, never reused (no
// conntrack or neighbour state crosses tenants), and the pool refills in the
// background. A restarted node removes the namespaces, links, locks and map
// entries its killed predecessor left (found by the node's TAG).
import type { Logger } from 'pino';
import { readFile } from 'node:fs/promises';
import { ThawError } from '../errors.ts';
import { DEFAULT_EGRESS, type Egress } from './egress.ts';
import { claimSlot, createNetns, destroyNetns, hostAddresses, nft, nodeTag, ownedSlots, sh, slotOf, vmNet, type Slot } from './netns.ts';
import { egressUpdate, HOST_TABLE, hostTable, render, VETH_GLOB } from './nft.ts';

export const DEFAULT_VM_SUBNET = process.env.THAW_VM_SUBNET ?? '10.213.0.0/16';

export interface PoolOptions {
  dataDir: string;
  log: Logger;
  /** Ready namespaces kept (default 2). */
  size?: number;
  subnet?: string;
  /** Resolver the guest's DNS (10.0.2.3:53) is forwarded to; default: the host's first non-loopback nameserver. */
  resolver?: string | null;
  /** The VMM uid/gid of a slot (owner of its TAP); absent: root. */
  owner?: (slot: Slot) => { uid: number; gid: number };
}

/** A network a VM holds until release(). */
export interface Lease {
  slot: Slot;
  /** Resolves once the egress policy is in place (start the VM meanwhile; resume it after). */
  ready: Promise<void>;
  /** The node's advertised address forwarded here (remote nodes), removed on release. */
  forward: { host: string; port: number; guestPort: number } | null;
}

/** First nameserver in /etc/resolv.conf that a namespace can reach (not loopback). */
export async function hostResolver(file = '/etc/resolv.conf'): Promise<string | null> {
  const text = await readFile(file, 'utf8').catch(() => '');
  for (const m of text.matchAll(/^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/gm)) if (!m[1]!.startsWith('127.')) return m[1]!;
  return process.env.THAW_VM_DNS ?? null;
}

export class NetPool {
  readonly tag: string;
  readonly subnet: string;
  private resolver: string | null = null;
  private readonly ready: Slot[] = [];
  private readonly leased = new Map<string, Lease>();
  private filling: Promise<void> | null = null;
  private closed = false;
  /** Wall ms of each namespace setup (for the benchmark and `thaw doctor`). */
  readonly setupMs: number[] = [];

  constructor(private readonly o: PoolOptions) {
    this.tag = nodeTag(o.dataDir);
    this.subnet = o.subnet ?? DEFAULT_VM_SUBNET;
  }

  /** Remove a predecessor's leftovers, install the host table, fill the pool. */
  async start(): Promise<{ removed: number }> {
    this.resolver = this.o.resolver !== undefined ? this.o.resolver : await hostResolver();
    await sh('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    const removed = await this.recover();
    await this.ensureHostTable();
    await this.fill();
    return { removed };
  }

  private async ensureHostTable(): Promise<void> {
    const have = await sh('nft', ['list', 'table', 'inet', HOST_TABLE]).then(() => true, () => false);
    if (!have) await nft(null, render(hostTable(this.subnet), false));
  }

  private async create(egress: Egress): Promise<Slot> {
    const t = performance.now();
    const slot = slotOf(this.tag, await claimSlot(this.tag), this.subnet);
    await createNetns(slot, { subnet: this.subnet, resolver: this.resolver, ...(this.o.owner ? { owner: this.o.owner(slot) } : {}) }, egress);
    this.setupMs.push(Math.round((performance.now() - t) * 10) / 10);
    return slot;
  }

  /** Top the pool up to its size (one at a time; never throws). */
  fill(): Promise<void> {
    this.filling ??= (async () => {
      try {
        while (!this.closed && this.ready.length < (this.o.size ?? 2)) this.ready.push(await this.create(DEFAULT_EGRESS));
      } catch (err) {
        this.o.log.error({ err: (err as Error).message }, 'VM network pool: namespace setup failed');
      } finally {
        this.filling = null;
      }
    })();
    return this.filling;
  }

  /**
   * Take a ready namespace (or make one if the pool is empty) and apply `egress`.
   * `forward`: also forward HOST:free port to the guest's `guestPort` (a node
   * whose VMs are reached over the network). Errors: NETWORK_SETUP_FAILED.
   */
  async acquire(egress: Egress = DEFAULT_EGRESS, forward?: { host: string; port: number; guestPort: number }): Promise<Lease> {
    if (this.closed) throw new ThawError('NETWORK_SETUP_FAILED', 'the VM network pool is shut down');
    const pooled = this.ready.shift();
    const slot = pooled ?? (await this.create(egress));
    void this.fill();
    const net = vmNet(slot, this.resolver);
    const steps: Promise<unknown>[] = [];
    if (pooled && (egress.mode !== DEFAULT_EGRESS.mode || egress.allow.length)) steps.push(nft(slot.netns, egressUpdate(net, egress)));
    if (forward) steps.push(nft(null, `add element inet ${HOST_TABLE} vmports { ${forward.host} . ${forward.port} : ${slot.nsIp} . ${forward.guestPort} }\n`));
    const lease: Lease = { slot, ready: Promise.all(steps).then(() => {}), forward: forward ?? null };
    lease.ready.catch(() => {});
    this.leased.set(slot.netns, lease);
    return lease;
  }

  /** Destroy a leased namespace (after its VMM is gone). Never throws. */
  async release(lease: Lease): Promise<void> {
    if (!this.leased.delete(lease.slot.netns)) return;
    await lease.ready.catch(() => {});
    if (lease.forward) await nft(null, `delete element inet ${HOST_TABLE} vmports { ${lease.forward.host} . ${lease.forward.port} }\n`).catch(() => {});
    await destroyNetns(lease.slot);
  }

  /** The VMM uid/gid that owns a slot's TAP (null: root). */
  owner(slot: Slot): { uid: number; gid: number } | null {
    return this.o.owner?.(slot) ?? null;
  }

  /** release() by namespace name (the VM's spec names it). Never throws. */
  async releaseNetns(netns: string): Promise<void> {
    const lease = this.leased.get(netns);
    if (lease) await this.release(lease);
  }

  /** Remove every namespace, link, lock and forward this node's TAG owns. */
  async recover(): Promise<number> {
    const mine = await ownedSlots(this.tag);
    const slots = mine.map((i) => slotOf(this.tag, i, this.subnet));
    if (slots.length) {
      const ips = new Set(slots.map((s) => s.nsIp));
      for (const [k, v] of await this.forwards()) if (ips.has(v)) await nft(null, `delete element inet ${HOST_TABLE} vmports { ${k} }\n`).catch(() => {});
    }
    for (const s of slots) await destroyNetns(s);
    // A namespace without its lock (the lock is taken first, so only by hand): remove it too.
    for (const n of (await sh('ip', ['netns', 'list']).catch(() => '')).split('\n').map((l) => l.split(' ')[0]!)) {
      const m = new RegExp(`^thv-${this.tag}-(\\d+)$`).exec(n);
      if (m) await destroyNetns(slotOf(this.tag, Number(m[1]), this.subnet));
    }
    return slots.length;
  }

  /** The host table's forwards: `addr . port` -> VM address. */
  private async forwards(): Promise<[string, string][]> {
    const out = await sh('nft', ['list', 'map', 'inet', HOST_TABLE, 'vmports']).catch(() => '');
    return [...out.matchAll(/(\d+\.\d+\.\d+\.\d+) \. (\d+) : (\d+\.\d+\.\d+\.\d+) \. \d+/g)].map((m) => [`${m[1]} . ${m[2]}`, m[3]!]);
  }

  /** Destroy every namespace of this node; drop the host table when no VM veth is left in this namespace. */
  async shutdown(): Promise<void> {
    this.closed = true;
    await this.filling;
    await Promise.all([...this.leased.values()].map((l) => this.release(l)));
    for (const s of this.ready.splice(0)) await destroyNetns(s);
    const links = await sh('ip', ['-o', 'link', 'show']).catch(() => '');
    if (!links.includes(`: ${VETH_GLOB.slice(0, -1)}`)) await sh('nft', ['delete', 'table', 'inet', HOST_TABLE]).catch(() => {});
  }

  /** Addresses guests may not reach (for `thaw doctor`). */
  blockedHostAddresses(): string[] {
    return hostAddresses();
  }
}
