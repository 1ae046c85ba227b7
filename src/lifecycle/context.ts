// What every lifecycle step (boot, bake, thaw, sleep, destroy) needs on a node.
import { execFile as execFileCb } from 'node:child_process';
import net from 'node:net';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import type { AgentClient } from '../guest/channel.ts';
import type { GuestAssets } from '../guest/assets.ts';
import type { Hypervisor, VmHandle } from '../hypervisor/types.ts';
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

/** A free TCP port on 127.0.0.1 (the hypervisor binds it right after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Copy-on-write qcow2 overlay over a read-only raw base: the base is never written. */
export async function createOverlay(base: string, overlay: string): Promise<void> {
  try {
    await execFile('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, overlay]);
  } catch (err) {
    throw new ThawError('HOST_MISSING_TOOL', `qemu-img create failed: ${(err as Error).message}`, { cause: err });
  }
}

export function vmId(app: string): string {
  return `${app}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}
