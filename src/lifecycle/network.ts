// Network attach for a VM about to start: a per-VM namespace from the node's
// pool (src/network/) with the app's egress policy, or, on a host without one,
// QEMU user-mode networking on a free host port (not isolated).
import type { VmTap } from '../hypervisor/types.ts';
import { DEFAULT_EGRESS } from '../network/egress.ts';
import type { Lease } from '../network/pool.ts';
import type { UndoStack } from '../undo.ts';
import type { RunConfig } from '../wire/run.ts';
import { freePort, type NodeContext } from './context.ts';

export interface Attached {
  hostPort: number;
  tap?: VmTap;
  /** The VMM's uid/gid (the TAP's owner). */
  jail?: { uid: number; gid: number };
  /** Resolves once the policy is in place: await before the guest runs. */
  ready: Promise<void>;
}

export async function attachNetwork(ctx: NodeContext, undo: UndoStack, run: RunConfig): Promise<Attached> {
  const pool = ctx.net;
  if (!pool) return { hostPort: await freePort(), ready: Promise.resolve() };
  // A node reached over the network forwards a port of its advertised address to the VM.
  const adv = ctx.vmHost && !ctx.vmHost.startsWith('127.') && ctx.vmHost !== '0.0.0.0' && ctx.vmHost !== 'localhost' ? ctx.vmHost : null;
  const forward = adv ? { host: adv, port: await freePort(adv), guestPort: run.port } : undefined;
  const lease: Lease = await pool.acquire(run.egress ?? DEFAULT_EGRESS, forward);
  undo.push('release vm network', () => pool.release(lease));
  const address = forward ? { host: forward.host, port: forward.port } : { host: lease.slot.nsIp, port: run.port };
  const jail = pool.owner(lease.slot);
  return { hostPort: 0, tap: { netns: lease.slot.netns, name: lease.slot.tap, address }, ...(jail ? { jail } : {}), ready: lease.ready };
}
