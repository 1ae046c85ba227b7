// Firecracker driver of the Hypervisor interface.
//
// *** UNTESTED AGAINST A REAL FIRECRACKER. *** Firecracker cannot be installed
// on the development host, so this driver was written strictly against the
// published API (shared/specs/firecracker.yaml, API 1.17.0-dev) and has only
// ever been exercised against the fake in firecracker.test.ts (an HTTP server
// on a unix socket that records requests). Expect surprises on first real use.
//
// Model: one `firecracker --api-sock DIR/fc.sock` process per VM; its stdout
// and stderr (the guest serial console and Firecracker's own log) go to
// DIR/console.log. Everything else is HTTP calls on the API socket.
//
// Host requirements and limitations:
// - KVM only (no TCG): accel() checks that /dev/kvm opens read-write.
// - Raw disks only (no qcow2). A thaw's "copy-on-write overlay" must be a raw
//   copy (e.g. `cp --reflink=auto`).
// - Network: Firecracker needs a host TAP device per VM plus host routing.
//   The TAP is named from the VM id (tapName()); the driver does NOT create it
//   (see tapSetupCommands()) and does NOT forward 127.0.0.1:hostPort to the
//   guest (that needs iptables DNAT or a proxy; not implemented). appAddress is
//   therefore the guest IP and guestPort. The guest IP and MAC are constants
//   because they are baked into snapshot memory; running several VMs at once
//   needs one network namespace per VM (Firecracker's "network for clones").
//   When the node has a VM network pool (src/network/), spec.tap names the
//   TAP inside the VM's own namespace and the driver uses it. NOT DONE (issue
//   11 note for the Firecracker owner): start firecracker inside spec.tap.netns
//   (jailer `--netns /run/netns/NAME`, `--uid/--gid` from spec.jail).
// - Agent channel: virtio-vsock, guest CID 3, agent port 1024, host-initiated
//   via DIR/vsock.sock and the `CONNECT 1024\n` / `OK <port>\n` handshake.
//   Firecracker resets vsock connections on snapshot restore.
import { spawn as nodeSpawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { ThawError, isThawError, type ErrorCode } from '../errors.ts';
import { UndoStack } from '../undo.ts';
import { FirecrackerApi, vsockHandshake } from './firecracker-api.ts';
import type { Accel, Hypervisor, SnapshotFiles, VmHandle, VmSpec } from './types.ts';

export const AGENT_VSOCK_PORT = 1024;
export const GUEST_CID = 3;
const ROOT_DRIVE = 'rootfs';
const IFACE = 'eth0';
const GUEST_MAC = '06:00:ac:10:00:02';

export type SpawnFn = (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;

export interface FirecrackerOptions {
  /** Firecracker binary (default 'firecracker', looked up on PATH). */
  binary?: string;
  /** Prefix of TAP device names (default 'fc', at most 7 chars). */
  tapPrefix?: string;
  /** Process spawner; tests inject a fake Firecracker. */
  spawn?: SpawnFn;
  /** KVM device to probe (default '/dev/kvm'). */
  kvmDevice?: string;
  /** How long boot()/restore() wait for the API socket (default 10 s). */
  startTimeoutMs?: number;
  /** How long openAgentChannel() waits for `OK <port>` (default 5 s). */
  agentConnectTimeoutMs?: number;
  /** Guest IP on its TAP /30 (default 172.16.0.2, host side .1). */
  guestIp?: string;
}

/** TAP device name for a VM: prefix + hash of the id, within Linux's 15-char limit. */
export function tapName(id: string, prefix = 'fc'): string {
  if (!/^[a-z0-9-]{1,7}$/.test(prefix)) throw new ThawError('INTERNAL', `bad TAP prefix "${prefix}"`);
  return prefix + createHash('sha256').update(id).digest('hex').slice(0, 15 - prefix.length);
}

/** Commands a host-network step must run (as root) before boot()/restore(). Not run by this driver. */
export function tapSetupCommands(tap: string, guestIp = '172.16.0.2'): string[][] {
  return [
    ['ip', 'tuntap', 'add', 'dev', tap, 'mode', 'tap'],
    ['ip', 'addr', 'add', `${hostSideIp(guestIp)}/30`, 'dev', tap],
    ['ip', 'link', 'set', 'dev', tap, 'up'],
  ];
}

function hostSideIp(guestIp: string): string {
  const p = guestIp.split('.').map(Number);
  return `${p[0]}.${p[1]}.${p[2]}.${(p[3] ?? 2) - 1}`;
}

type Exit = { code: number | null; signal: NodeJS.Signals | null };

/** The handle, plus what only this driver needs. */
class FirecrackerVm implements VmHandle {
  readonly consoleLog: string;
  readonly apiSocket: string;
  readonly vsockSocket: string;
  readonly api: FirecrackerApi;
  exitInfo: Exit | null = null;
  destroyed: Promise<void> | null = null;

  constructor(
    readonly spec: VmSpec,
    readonly child: ChildProcess,
    readonly pid: number,
    readonly exited: Promise<Exit>,
    readonly appAddress: { host: string; port: number },
    /** Memory file this VM maps privately (restored VMs), or null (cold boot: anonymous memory). */
    readonly privateMem: string | null,
  ) {
    this.consoleLog = join(spec.dir, 'console.log');
    this.apiSocket = join(spec.dir, 'fc.sock');
    this.vsockSocket = join(spec.dir, 'vsock.sock');
    this.api = new FirecrackerApi(this.apiSocket);
    void exited.then((e) => (this.exitInfo = e));
  }
  get id(): string {
    return this.spec.id;
  }
}

export class FirecrackerDriver implements Hypervisor {
  readonly name = 'firecracker' as const;
  private readonly binary: string;
  private readonly tapPrefix: string;
  private readonly spawnFn: SpawnFn;
  private readonly kvmDevice: string;
  private readonly startTimeoutMs: number;
  private readonly agentTimeoutMs: number;
  private readonly guestIp: string;
  private accelProbe: Promise<Accel> | null = null;

  constructor(opts: FirecrackerOptions = {}) {
    this.binary = opts.binary ?? 'firecracker';
    this.tapPrefix = opts.tapPrefix ?? 'fc';
    this.spawnFn = opts.spawn ?? nodeSpawn;
    this.kvmDevice = opts.kvmDevice ?? '/dev/kvm';
    this.startTimeoutMs = opts.startTimeoutMs ?? 10_000;
    this.agentTimeoutMs = opts.agentConnectTimeoutMs ?? 5_000;
    this.guestIp = opts.guestIp ?? '172.16.0.2';
    tapName('x', this.tapPrefix); // validate the prefix early
  }

  /** Firecracker has no TCG: 'kvm' when /dev/kvm opens read-write, else HYPERVISOR_UNSUPPORTED. Cached. */
  accel(): Promise<Accel> {
    this.accelProbe ??= open(this.kvmDevice, 'r+').then(
      async (fh) => {
        await fh.close();
        return 'kvm' as const;
      },
      (err: unknown) => {
        throw new ThawError('HYPERVISOR_UNSUPPORTED', `Firecracker needs KVM, but ${this.kvmDevice} cannot be opened read-write: ${(err as Error).message}`, { cause: err });
      },
    );
    return this.accelProbe;
  }

  /** On failure the process is killed; spec.dir (with the console log named in the error) stays for the caller. */
  async boot(spec: VmSpec): Promise<VmHandle> {
    checkSpec(spec);
    return UndoStack.run(async (undo) => {
      const vm = await this.start(spec, null, undo);
      const tap = spec.tap?.name ?? tapName(spec.id, this.tapPrefix); // a per-VM netns TAP (src/network) when the node has one
      const ipArg = `ip=${this.guestIp}::${hostSideIp(this.guestIp)}:255.255.255.252::${IFACE}:off`;
      const f: ErrorCode = 'VM_START_FAILED';
      await vm.api.send('PUT /boot-source', { kernel_image_path: spec.kernel, initrd_path: spec.initrd, boot_args: `${spec.cmdline} ${ipArg}`.trim() }, f);
      // Not the root device (Firecracker would append root=/dev/vda): the initrd mounts it.
      // Writeback: guest flushes become host fsyncs. Sync engine: no I/O in flight once vCPUs are paused.
      await vm.api.send('PUT /drives/', { drive_id: ROOT_DRIVE, path_on_host: spec.disk, is_root_device: false, is_read_only: false, cache_type: 'Writeback', io_engine: 'Sync' }, f, ROOT_DRIVE);
      await vm.api.send('PUT /machine-config', { mem_size_mib: spec.memMiB, vcpu_count: spec.vcpus, smt: false, track_dirty_pages: false }, f);
      await vm.api.send('PUT /network-interfaces/', { iface_id: IFACE, host_dev_name: tap, guest_mac: GUEST_MAC }, f, IFACE);
      await vm.api.send('PUT /vsock', { guest_cid: GUEST_CID, uds_path: vm.vsockSocket }, f);
      await vm.api.send('PUT /actions', { action_type: 'InstanceStart' }, f);
      return vm;
    });
  }

  async restore(spec: VmSpec, snap: SnapshotFiles): Promise<VmHandle> {
    checkSpec(spec);
    if (spec.memFile !== snap.mem) throw new ThawError('INTERNAL', `restore: spec.memFile (${spec.memFile}) must be snap.mem (${snap.mem})`);
    return UndoStack.run(async (undo) => {
      const vm = await this.start(spec, snap.mem, undo);
      const f: ErrorCode = 'VM_START_FAILED';
      // backend_type 'File': Firecracker mmaps the memory file MAP_PRIVATE, so guest writes
      // are copy-on-write in this process and the seed's memory image is never modified
      // (the seed invariant: one seed, many thaws). Pages not yet copied still read through to
      // the file, so nothing may rewrite snap.mem while this VM lives. The snapshot records the TAP name
      // and vsock socket of the baked VM; both are re-pointed to this VM's own.
      await vm.api.send('PUT /snapshot/load', {
        snapshot_path: snap.state,
        mem_backend: { backend_type: 'File', backend_path: snap.mem },
        resume_vm: false,
        network_overrides: [{ iface_id: IFACE, host_dev_name: spec.tap?.name ?? tapName(spec.id, this.tapPrefix) }],
        vsock_override: { uds_path: vm.vsockSocket },
      }, f);
      // It also records the path of the root drive at bake time, and Firecracker
      // opens that path during load: it must still exist then and must be the seed's own disk
      // (the disk the memory image was taken with). SnapshotLoadParams has no drive override,
      // so the drive is re-pointed to spec.disk with `PATCH /drives/{id}` (PartialDrive,
      // "post-boot only": a loaded VM counts as started) while the vCPUs are still paused,
      // before resume(). spec.disk is a byte copy of that disk, so the guest sees no change.
      await vm.api.send('PATCH /drives/', { drive_id: ROOT_DRIVE, path_on_host: spec.disk }, f, ROOT_DRIVE);
      return vm;
    });
  }

  async pause(vm: VmHandle): Promise<void> {
    // Sync I/O engine: every completed guest write is already in the host page cache, and
    // none is in flight once paused, so copies of the disk see all of it.
    await this.call(vm, (h) => h.api.send('PATCH /vm', { state: 'Paused' }, 'INTERNAL'));
  }

  async resume(vm: VmHandle): Promise<void> {
    await this.call(vm, (h) => h.api.send('PATCH /vm', { state: 'Resumed' }, 'INTERNAL'));
  }

  async snapshot(vm: VmHandle, snap: SnapshotFiles): Promise<void> {
    const h = asFc(vm);
    if (h.privateMem !== null && h.privateMem === snap.mem) {
      throw new ThawError('INTERNAL', `snapshot: ${snap.mem} is the file this VM's memory is mapped from; write the new seed elsewhere`);
    }
    await this.call(vm, (x) => x.api.send('PUT /snapshot/create', { snapshot_type: 'Full', snapshot_path: snap.state, mem_file_path: snap.mem }, 'INTERNAL'));
  }

  async openAgentChannel(vm: VmHandle): Promise<Duplex> {
    const h = asFc(vm);
    const sock = net.createConnection(h.vsockSocket);
    try {
      await vsockHandshake(sock, AGENT_VSOCK_PORT, this.agentTimeoutMs);
      return sock;
    } catch (err) {
      sock.destroy();
      if (h.exitInfo) throw new ThawError('VM_GONE', `Firecracker VM ${vm.id} exited`, { cause: err, details: { ...h.exitInfo, consoleLog: h.consoleLog } });
      throw err;
    }
  }

  destroy(vm: VmHandle): Promise<void> {
    if (!(vm instanceof FirecrackerVm)) return Promise.resolve(); // never throws
    const h = vm;
    h.destroyed ??= (async () => {
      await killAndWait(h.child, h.exited);
      await h.api.close();
      await rm(h.spec.dir, { recursive: true, force: true }).catch(() => undefined);
    })();
    return h.destroyed;
  }

  /** Spawn Firecracker and wait until its API answers, the process exits, or the timeout. */
  private async start(spec: VmSpec, privateMem: string | null, undo: UndoStack): Promise<FirecrackerVm> {
    await mkdir(spec.dir, { recursive: true });
    const apiSocket = join(spec.dir, 'fc.sock');
    // Firecracker refuses to bind an existing socket path.
    await Promise.all(['fc.sock', 'vsock.sock'].map((f) => rm(join(spec.dir, f), { force: true })));
    const logFd = openSync(join(spec.dir, 'console.log'), 'a');
    let child: ChildProcess;
    try {
      child = this.spawnFn(this.binary, ['--api-sock', apiSocket], { stdio: ['ignore', logFd, logFd] });
    } finally {
      closeSync(logFd);
    }
    let spawnError: Error | null = null;
    const exited = new Promise<Exit>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', (err) => {
        spawnError = err;
        if (child.pid === undefined) resolve({ code: null, signal: null });
      });
    });
    undo.push('kill firecracker', () => killAndWait(child, exited));
    if (child.pid === undefined) {
      await exited;
      throw new ThawError('HOST_MISSING_TOOL', `cannot run ${this.binary}: ${(spawnError as Error | null)?.message ?? 'spawn failed'}`, { cause: spawnError });
    }
    const appAddress = spec.tap?.address ?? { host: this.guestIp, port: spec.guestPort };
    const vm = new FirecrackerVm(spec, child, child.pid, exited, appAddress, privateMem);
    undo.push('close api client', () => vm.api.close());
    await waitForApi(vm, this.startTimeoutMs);
    return vm;
  }

  /** Run one API call on a live VM; transport failures become VM_GONE (exited) or INTERNAL. */
  private async call(vm: VmHandle, fn: (h: FirecrackerVm) => Promise<void>): Promise<void> {
    const h = asFc(vm);
    try {
      await fn(h);
    } catch (err) {
      if (isThawError(err)) throw err;
      await Promise.race([h.exited, sleep(100)]); // a dead socket usually means a dead process
      if (h.exitInfo) throw new ThawError('VM_GONE', `Firecracker VM ${vm.id} exited`, { cause: err, details: { ...h.exitInfo, consoleLog: h.consoleLog } });
      throw new ThawError('INTERNAL', `Firecracker API of VM ${vm.id} unreachable: ${(err as Error).message}`, { cause: err });
    }
  }
}

function checkSpec(spec: VmSpec): void {
  if (spec.diskFormat !== 'raw') throw new ThawError('HYPERVISOR_UNSUPPORTED', `Firecracker needs a raw disk, got ${spec.diskFormat} (${spec.disk})`);
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 32) throw new ThawError('HYPERVISOR_UNSUPPORTED', `Firecracker supports 1-32 vCPUs, got ${spec.vcpus}`);
  if (!Number.isInteger(spec.memMiB) || spec.memMiB < 1) throw new ThawError('HYPERVISOR_UNSUPPORTED', `bad memory size ${spec.memMiB} MiB`);
}

function asFc(vm: VmHandle): FirecrackerVm {
  if (!(vm instanceof FirecrackerVm)) throw new ThawError('INTERNAL', `VM ${vm.id} was not started by the Firecracker driver`);
  return vm;
}

async function killAndWait(child: ChildProcess, exited: Promise<Exit>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 5_000)))]);
  clearTimeout(timer);
}

/** Poll `GET /` until it answers, racing the process exit (VM_START_FAILED) and a timeout (VM_TIMEOUT). */
async function waitForApi(vm: FirecrackerVm, timeoutMs: number): Promise<void> {
  const details = { consoleLog: vm.consoleLog, apiSocket: vm.apiSocket };
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs)));
  const exited = vm.exited.then(() => 'exited' as const);
  try {
    for (;;) {
      const probe = vm.api.describe().then(() => 'up' as const, () => 'retry' as const);
      let outcome = await Promise.race([probe, exited, timedOut]);
      if (outcome === 'up') return;
      if (outcome === 'retry') outcome = await Promise.race([sleep(20).then(() => 'retry' as const), exited, timedOut]);
      if (outcome === 'retry') continue;
      if (outcome === 'exited') {
        const e = await vm.exited;
        throw new ThawError('VM_START_FAILED', `Firecracker exited before its API answered (code ${e.code}, signal ${e.signal}); see ${vm.consoleLog}`, { details: { ...details, ...e } });
      }
      throw new ThawError('VM_TIMEOUT', `Firecracker API did not answer within ${timeoutMs} ms; see ${vm.consoleLog}`, { details });
    }
  } finally {
    clearTimeout(timer);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
