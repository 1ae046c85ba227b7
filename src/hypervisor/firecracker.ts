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
// - Raw disks only (no qcow2): a thaw's copy-on-write disk is a raw reflink or
//   sparse copy (createOverlay with diskFormat 'raw').
// - Relative paths: Firecracker resolves every path in its work folder (the VM
//   folder, or its jail's root; firecracker-jail.ts places the files there). A
//   snapshot records those relative paths, and /snapshot/load reopens them "at
//   the same relative paths" (snapshot-support.md, "Loading snapshots"), i.e.
//   in the NEW VM's work folder.
// - Jail (issue 11): with the jailer present (`jailer` option) it chroots,
//   joins the VM's namespace and drops to the VM's uid; without it the process
//   runs under the same nsenter/setpriv/mount jail as QEMU (jail.ts).
// - Network: the VM's own namespace (spec.tap, src/network/): eth0 on its TAP
//   `tap0`, guest MAC fixed (GUEST_MAC: a seed's guest keeps it), guest
//   10.0.2.15 via 10.0.2.2 (set by the guest's init), the app reached at the
//   veth address (spec.tap.address, DNATed in the namespace). A restore names
//   the same TAP (network_overrides). Without a namespace: the driver's `tap`
//   option (a TAP in the node's namespace, one VM at a time) with a
//   127.0.0.1:hostPort relay; else no network.
// - Volume (issue 12): the second drive `volume` (/dev/vdb), `volume.raw` in the
//   work folder (a hard link to the app's current volume file). A restore finds
//   it there, then re-points the drive to it (PATCH /drives/volume, between the
//   load and the resume), which also makes Firecracker re-read its size.
// - Agent channel: virtio-vsock, guest CID 3, agent port 1024, host-initiated
//   via vsock.sock and `CONNECT 1024\n` / `OK <port>\n`. Firecracker closes the
//   connection while nothing in the guest listens (a cold boot's agent is not up
//   yet), so openAgentChannel() retries until a deadline. After a snapshot load,
//   vsock traffic is held until the resumed guest handled the transport reset:
//   agentChannelBeforeResume is false, and thaw opens the channel after resume().
import { spawn as nodeSpawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, open, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Duplex } from 'node:stream';
import { ThawError, isThawError, type ErrorCode } from '../errors.ts';
import { UndoStack } from '../undo.ts';
import { FirecrackerApi } from './firecracker-api.ts';
import { forwardPort, type Forward } from './firecracker-forward.ts';
import { collectSnapshot, DISK_FILE, INITRD_FILE, KERNEL_FILE, placement, SEED_MEM, SEED_STATE, snapshotTargets, stage, unplace, VOLUME_FILE, which, VSOCK_FILE, type FcPlace, type JailerOptions } from './firecracker-jail.ts';
import { connectAgent, killAndWait, sleep, waitForApi, type Exit } from './firecracker-process.ts';
import { vmmEnv } from './jail.ts';
import type { Accel, Hypervisor, SnapshotFiles, VmHandle, VmSpec } from './types.ts';

export { DISK_FILE, VSOCK_FILE } from './firecracker-jail.ts';
export { AGENT_VSOCK_PORT } from './firecracker-process.ts';
export const GUEST_CID = 3;
const ROOT_DRIVE = 'rootfs';
export const VOLUME_DRIVE = 'volume';
const IFACE = 'eth0';
/** The guest's MAC, the same at every boot: a seed's guest (its ARP peers) keeps it. */
export const GUEST_MAC = '06:00:ac:10:00:02';

export type SpawnFn = (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;

export interface FirecrackerOptions {
  /** Firecracker binary (default 'firecracker', looked up on PATH). */
  binary?: string;
  /** Run VMs with a VMM uid through Firecracker's jailer (firecracker-jail.ts); absent: the nsenter/setpriv jail. */
  jailer?: JailerOptions;
  /** Process spawner; tests inject a fake Firecracker. */
  spawn?: SpawnFn;
  /** KVM device to probe (default '/dev/kvm'). */
  kvmDevice?: string;
  /** How long boot()/restore() wait for the API socket (default 10 s). */
  startTimeoutMs?: number;
  /** How long openAgentChannel() keeps trying the vsock handshake (default 60 s: a cold boot's agent must come up). */
  agentConnectTimeoutMs?: number;
  /**
   * Guest IP (default 10.0.2.15): the guest's init sets 10.0.2.15/24 via 10.0.2.2 itself
   * (guest/agent/init.c, QEMU's user-mode addresses), so the TAP's host side is 10.0.2.2/24.
   */
  guestIp?: string;
  /** TAP device in the node's namespace for VMs without their own (one VM at a time: the guest IP is in every seed). */
  tap?: string;
}

/** The handle, plus what only this driver needs. */
class FirecrackerVm implements VmHandle {
  readonly consoleLog: string;
  readonly api: FirecrackerApi;
  exitInfo: Exit | null = null;
  destroyed: Promise<void> | null = null;
  /** 127.0.0.1:hostPort relay to the guest (a TAP in the node's namespace only). */
  forward: Forward | null = null;

  constructor(
    readonly spec: VmSpec,
    readonly place: FcPlace,
    readonly child: ChildProcess,
    readonly pid: number,
    readonly exited: Promise<Exit>,
    readonly appAddress: { host: string; port: number },
    /** Memory file this VM maps privately (restored VMs), or null (cold boot: anonymous memory). */
    readonly privateMem: string | null,
  ) {
    this.consoleLog = join(spec.dir, 'console.log');
    this.api = new FirecrackerApi(place.apiSocket);
    void exited.then((e) => (this.exitInfo = e));
  }
  get id(): string {
    return this.spec.id;
  }
  get apiSocket(): string {
    return this.place.apiSocket;
  }
}

export class FirecrackerDriver implements Hypervisor {
  readonly name = 'firecracker' as const;
  readonly diskFormat = 'raw' as const;
  readonly agentChannelBeforeResume = false;
  readonly memImageReadOnly = true;
  private readonly binary: string;
  private readonly spawnFn: SpawnFn;
  private readonly kvmDevice: string;
  private readonly startTimeoutMs: number;
  private readonly agentTimeoutMs: number;
  private readonly guestIp: string;
  private readonly tap: string | undefined;
  private readonly jailer: JailerOptions | undefined;
  private accelProbe: Promise<Accel> | null = null;

  constructor(opts: FirecrackerOptions = {}) {
    this.binary = opts.binary ?? 'firecracker';
    this.spawnFn = opts.spawn ?? nodeSpawn;
    this.kvmDevice = opts.kvmDevice ?? '/dev/kvm';
    this.startTimeoutMs = opts.startTimeoutMs ?? 10_000;
    this.agentTimeoutMs = opts.agentConnectTimeoutMs ?? 60_000;
    this.guestIp = opts.guestIp ?? '10.0.2.15';
    this.tap = opts.tap;
    this.jailer = opts.jailer;
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
      const tap = spec.tap?.name ?? this.tap;
      const vm = await this.start(spec, null, undo);
      const f: ErrorCode = 'VM_START_FAILED';
      await vm.api.send('PUT /boot-source', { kernel_image_path: KERNEL_FILE, initrd_path: INITRD_FILE, boot_args: spec.cmdline }, f);
      // Not the root device (Firecracker would append root=/dev/vda): the initrd mounts it.
      // Writeback: guest flushes become host fsyncs. Sync engine: no I/O in flight once vCPUs are paused.
      await vm.api.send('PUT /drives/', { drive_id: ROOT_DRIVE, path_on_host: DISK_FILE, is_root_device: false, is_read_only: false, cache_type: 'Writeback', io_engine: 'Sync' }, f, ROOT_DRIVE);
      // The app's volume is the second drive (/dev/vdb), there from the cold boot on, so a seed's
      // device configuration holds it (unmounted: the agent mounts it only after the gate).
      if (spec.volume) await vm.api.send('PUT /drives/', { drive_id: VOLUME_DRIVE, path_on_host: VOLUME_FILE, is_root_device: false, is_read_only: false, cache_type: 'Writeback', io_engine: 'Sync' }, f, VOLUME_DRIVE);
      await vm.api.send('PUT /machine-config', { mem_size_mib: spec.memMiB, vcpu_count: spec.vcpus, smt: false, track_dirty_pages: false }, f);
      if (tap) await vm.api.send('PUT /network-interfaces/', { iface_id: IFACE, host_dev_name: tap, guest_mac: GUEST_MAC }, f, IFACE);
      await vm.api.send('PUT /vsock', { guest_cid: GUEST_CID, uds_path: VSOCK_FILE }, f);
      await vm.api.send('PUT /actions', { action_type: 'InstanceStart' }, f);
      return vm;
    });
  }

  async restore(spec: VmSpec, snap: SnapshotFiles): Promise<VmHandle> {
    checkSpec(spec);
    if (spec.memFile !== snap.mem) throw new ThawError('INTERNAL', `restore: spec.memFile (${spec.memFile}) must be snap.mem (${snap.mem})`);
    return UndoStack.run(async (undo) => {
      const tap = spec.tap?.name ?? this.tap;
      const vm = await this.start(spec, snap, undo);
      const f: ErrorCode = 'VM_START_FAILED';
      // backend_type 'File': Firecracker opens the memory file read-only and maps it MAP_PRIVATE,
      // so guest writes are copy-on-write in this process and the seed's memory image is never
      // modified (one seed, many thaws). Pages not yet copied still read through to the file, so
      // nothing may rewrite it while this VM lives. The snapshot recorded `disk.raw`,
      // `volume.raw` and `vsock.sock` relative to the baked VM's work folder; they are this VM's.
      await vm.api.send('PUT /snapshot/load', {
        snapshot_path: SEED_STATE,
        mem_backend: { backend_type: 'File', backend_path: SEED_MEM },
        resume_vm: false,
        ...(tap ? { network_overrides: [{ iface_id: IFACE, host_dev_name: tap }] } : {}),
        vsock_override: { uds_path: VSOCK_FILE },
      }, f);
      // Paused, before the resume: point the volume drive at the app's current file. Firecracker
      // reopens it and re-reads its size, so a volume grown since the bake shows its new size.
      if (spec.volume) await vm.api.send('PATCH /drives/', { drive_id: VOLUME_DRIVE, path_on_host: VOLUME_FILE }, f, VOLUME_DRIVE);
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

  /** Firecracker writes the snapshot in its work folder (a jailed one sees nothing else); it is then moved to `snap`. */
  async snapshot(vm: VmHandle, snap: SnapshotFiles): Promise<void> {
    const h = asFc(vm);
    if (h.privateMem !== null && resolve(h.privateMem) === resolve(snap.mem)) {
      throw new ThawError('INTERNAL', `snapshot: ${snap.mem} is the file this VM's memory is mapped from; write the new seed elsewhere`);
    }
    await this.call(vm, (x) => x.api.send('PUT /snapshot/create', { snapshot_type: 'Full', snapshot_path: snapshotTargets.state, mem_file_path: snapshotTargets.mem }, 'INTERNAL'));
    await collectSnapshot(h.place, snap);
  }

  /** Retry the vsock handshake until the guest's agent listens (AGENT_TIMEOUT after agentConnectTimeoutMs). */
  openAgentChannel(vm: VmHandle): Promise<Duplex> {
    const h = asFc(vm);
    return connectAgent(h.place.vsockSocket, vm.id, this.agentTimeoutMs, () => (h.exitInfo ? { ...h.exitInfo, consoleLog: h.consoleLog } : null));
  }

  destroy(vm: VmHandle): Promise<void> {
    if (!(vm instanceof FirecrackerVm)) return Promise.resolve(); // never throws
    const h = vm;
    h.destroyed ??= (async () => {
      await killAndWait(h.child, h.exited);
      await h.api.close();
      await h.forward?.close();
      await unplace(h.place);
      await rm(h.spec.dir, { recursive: true, force: true }).catch(() => undefined);
    })();
    return h.destroyed;
  }

  /** Place the files, spawn Firecracker (jailed), and wait until its API answers, the process exits, or the timeout. */
  private async start(spec: VmSpec, snap: SnapshotFiles | null, undo: UndoStack): Promise<FirecrackerVm> {
    for (const bin of [this.binary, ...(this.jailer && spec.jail ? [this.jailer.binary] : [])]) {
      if (!which(bin)) throw new ThawError('HOST_MISSING_TOOL', `cannot run ${bin}: not found (set THAW_FIRECRACKER / THAW_JAILER or put it on PATH)`);
    }
    await mkdir(spec.dir, { recursive: true });
    const place = placement(spec, this.binary, this.jailer);
    undo.push('remove jail', () => unplace(place));
    await stage(spec, place, snap ?? undefined);
    const logFd = openSync(join(spec.dir, 'console.log'), 'a');
    let child: ChildProcess;
    try {
      const [cmd, ...args] = place.argv;
      child = this.spawnFn(cmd!, args, { cwd: spec.dir, stdio: ['ignore', logFd, logFd], env: vmmEnv(spec) });
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
      throw new ThawError('HOST_MISSING_TOOL', `cannot run ${place.argv[0]}: ${(spawnError as Error | null)?.message ?? 'spawn failed'}`, { cause: spawnError });
    }
    // Every wrapper execs (nsenter, setpriv, unshare, chroot, the jailer): this pid is Firecracker's. recover() reads it.
    await writeFile(join(spec.dir, 'vmm.pid'), `${child.pid}\n`);
    const relay = !spec.tap && this.tap;
    const appAddress = spec.tap?.address ?? (relay ? { host: '127.0.0.1', port: spec.hostPort } : { host: this.guestIp, port: spec.guestPort });
    const vm = new FirecrackerVm(spec, place, child, child.pid, exited, appAddress, snap?.mem ?? null);
    undo.push('close api client', () => vm.api.close());
    if (relay) {
      vm.forward = await forwardPort('127.0.0.1', spec.hostPort, this.guestIp, spec.guestPort);
      undo.push('close port relay', () => vm.forward!.close());
    }
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
  if (resolve(spec.disk) !== join(resolve(spec.dir), DISK_FILE)) throw new ThawError('INTERNAL', `Firecracker: the disk must be ${DISK_FILE} in the VM folder ${spec.dir}, got ${spec.disk}`);
  if (spec.diskFormat !== 'raw') throw new ThawError('HYPERVISOR_UNSUPPORTED', `Firecracker needs a raw disk, got ${spec.diskFormat} (${spec.disk})`);
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 32) throw new ThawError('HYPERVISOR_UNSUPPORTED', `Firecracker supports 1-32 vCPUs, got ${spec.vcpus}`);
  if (!Number.isInteger(spec.memMiB) || spec.memMiB < 1) throw new ThawError('HYPERVISOR_UNSUPPORTED', `bad memory size ${spec.memMiB} MiB`);
}

function asFc(vm: VmHandle): FirecrackerVm {
  if (!(vm instanceof FirecrackerVm)) throw new ThawError('INTERNAL', `VM ${vm.id} was not started by the Firecracker driver`);
  return vm;
}
