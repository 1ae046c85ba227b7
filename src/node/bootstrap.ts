// Builds a node agent on this host: guest assets, hypervisor (KVM when it
// works, else TCG), the node folder (recovered after a crash), seed cache.
// Used by `thaw up` (its local node) and `thaw node`.
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { ensureAssets, type GuestAssets } from '../guest/assets.ts';
import { createHypervisor } from '../hypervisor/select.ts';
import type { DriverName } from '../hypervisor/types.ts';
import type { NodeContext } from '../lifecycle/context.ts';
import { SeedStore } from '../seed/s3.ts';
import { NodeAgent, type ImageSource } from './agent.ts';
import { LocalNode } from './local.ts';
import { startNetwork } from '../network/host.ts';
import { vmmOwner } from '../hypervisor/jail.ts';

export interface NodeSetup {
  /** Node folder (vms/, seeds/, logs/, images/). */
  dir: string;
  name: string;
  s3: { endpoint?: string; bucket: string; region?: string } | null;
  capBytes: number;
  /** Most VMs at once; default: what 80% of this host's memory holds. */
  capacity?: number;
  images: (assets: GuestAssets) => ImageSource;
  log: Logger;
  /** Address the app port forwards bind to (default 127.0.0.1). */
  bindHost?: string;
  /** Hypervisor driver (default qemu). */
  driver?: DriverName;
  /** Address the router connects to for those forwards (default bindHost). */
  appHost?: string;
  /** Most wakes at once (default: one per CPU). */
  maxConcurrentWakes?: number;
  /** Overall deadline of one wake (ms). */
  wakeDeadlineMs?: number;
}

/** The admission options a node agent takes, from `thaw up`/`thaw node` options. */
export function wakeLimits(o: { maxConcurrentWakes?: number; wakeDeadlineMs?: number }): { maxConcurrentWakes?: number; wakeDeadlineMs?: number } {
  return { ...(o.maxConcurrentWakes !== undefined ? { maxConcurrentWakes: o.maxConcurrentWakes } : {}), ...(o.wakeDeadlineMs !== undefined ? { wakeDeadlineMs: o.wakeDeadlineMs } : {}) };
}

export async function createNodeAgent(o: NodeSetup): Promise<NodeAgent> {
  const driver = o.driver ?? 'qemu';
  const assets = await ensureAssets((l) => o.log.info(l));
  const hv = createHypervisor(driver, { assets, ...(o.bindHost ? { bindHost: o.bindHost } : {}), ...(o.appHost ? { appHost: o.appHost } : {}) });
  const accel = await hv.accel();
  o.log.info({ driver, accel, node: o.name }, 'hypervisor ready');
  const memMiB = Number(process.env.THAW_VM_MEM_MIB ?? 512);
  const ctx: NodeContext = {
    hv,
    assets,
    dataDir: o.dir,
    log: o.log,
    memMiB,
    vcpus: Number(process.env.THAW_VM_VCPUS ?? 2),
    guestPort: 8080,
    appStartTimeoutMs: 60_000,
    bootTimeoutMs: 90_000,
  };
  const node = new LocalNode(ctx, o.name);
  const rec = await node.recover();
  if (rec.killed || rec.removed) o.log.warn(rec, 'cleaned up after a previous run');
  // After recover(): the killed predecessor's VMMs are gone, so its namespaces can go too.
  ctx.net = await startNetwork({ dataDir: o.dir, log: o.log, owner: (s) => vmmOwner(s.index) });
  if (o.bindHost) ctx.vmHost = o.bindHost;
  const capacity = o.capacity ?? Math.max(1, Math.floor((os.totalmem() * 0.8) / (memMiB * 1024 * 1024)));
  const agent = new NodeAgent({
    node,
    s3: o.s3 ? new SeedStore({ ...o.s3, forcePathStyle: true }) : null,
    capBytes: o.capBytes,
    capacity,
    images: o.images(assets),
    log: o.log,
    ...wakeLimits(o),
  });
  await agent.start();
  return agent;
}

export const nodeDir = (data: string) => path.join(data, 'node');
