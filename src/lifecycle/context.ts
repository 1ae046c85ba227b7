// What every lifecycle step (boot, bake, thaw, sleep, destroy) needs on a node.
import { execFile as execFileCb } from 'node:child_process';
import { chmod } from 'node:fs/promises';
import net from 'node:net';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import type { AgentClient } from '../guest/channel.ts';
import type { GuestAssets } from '../guest/assets.ts';
import type { Hypervisor, VmHandle } from '../hypervisor/types.ts';
import type { NetPool } from '../network/pool.ts';
import type { AttachedVolume } from './volume.ts';
import { ThawError } from '../errors.ts';

export const execFile = promisify(execFileCb);

export interface NodeContext {
  hv: Hypervisor;
  assets: GuestAssets;
  /** Node data folder: vms/ (runtime dirs), seeds/, images/. */
  dataDir: string;
  log: Logger;
  memMiB: number;
  vcpus: number;
  /** Default guest port (each deploy's run config names its own). */
  guestPort: number;
  /** How long an app may take to listen on its port. */
  appStartTimeoutMs: number;
  /** How long a cold boot may take until the agent says hello. */
  bootTimeoutMs: number;
  /** Per-VM network namespaces (src/network/); absent: QEMU user-mode networking, tenants NOT isolated. */
  net?: NetPool | null;
  /** Address this node's VMs are reached at from the control plane (a remote node's --host): forwarded to each VM. */
  vmHost?: string;
}

/** A VM that serves an app. */
export interface RunningVm {
  app: string;
  deployId: string;
  vm: VmHandle;
  agent: AgentClient;
  appPid: number;
  bootMode: 'snapshot' | 'cold';
  /** Seed this VM was thawed from (null after a cold boot). */
  seedId: string | null;
  startedAt: number;
  /** The app's volume, mounted after the gate (null: the app has none). */
  volume?: AttachedVolume | null;
}

export type Stages = Record<string, number>;

/** Time each stage; stage names become wake-record fields. */
export class Stopwatch {
  readonly t0 = performance.now();
  private last = this.t0;
  readonly stages: Stages = {};
  lap(name: string): number {
    const now = performance.now();
    const ms = Math.round((now - this.last) * 10) / 10;
    this.stages[name] = (this.stages[name] ?? 0) + ms;
    this.last = now;
    return ms;
  }
  total(): number {
    return Math.round((performance.now() - this.t0) * 10) / 10;
  }
}

/** A free TCP port on `host` (the hypervisor binds it, or a forward claims it, right after). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * The per-VM disk over a read-only raw base; the base is never written.
 * - qcow2 (QEMU): a copy-on-write qcow2 overlay backed by the base.
 * - raw (Firecracker, which opens raw files only): a copy that shares blocks with
 *   the base where the filesystem can (a reflink on XFS/Btrfs) and is otherwise a
 *   sparse copy (holes stay holes; cost grows with the data in the base).
 */
export async function createOverlay(base: string, overlay: string, format: 'raw' | 'qcow2' = 'qcow2'): Promise<void> {
  const [cmd, args] = format === 'raw'
    ? ['cp', ['--reflink=auto', '--sparse=always', base, overlay]]
    : ['qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, overlay]];
  try {
    await execFile(cmd, args);
    if (format === 'raw') await chmod(overlay, 0o600); // cp keeps the base's read-only mode
  } catch (err) {
    throw new ThawError('HOST_MISSING_TOOL', `${cmd} (${format} overlay) failed: ${(err as Error).message}`, { cause: err });
  }
}

export function vmId(app: string): string {
  return `${app}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}
