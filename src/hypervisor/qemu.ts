// QEMU driver (QMP over a unix socket). Guest memory lives in a file
// (memory-backend-file): a cold boot maps it shared, so at bake time the file
// IS the memory image; a restore maps the seed's file privately (copy-on-write),
// so any number of thaws leave it unchanged. Migration runs with
// x-ignore-shared, so the state stream is only CPU/device state (~100 KB).
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { ThawError } from '../errors.ts';
import { handOver, SANDBOX, STATE_FD, STATE_SOCK, stateSink, vmmCommand, vmmEnv, type HandedFiles } from './jail.ts';
import { probeAccel } from './kvm-probe.ts';
import { progressTimer } from './cpu.ts';
import { Qmp } from './qmp.ts';
import type { Accel, Hypervisor, SnapshotFiles, VmHandle, VmSpec } from './types.ts';

export interface QemuOptions {
  binary?: string;
  /** Force an accelerator instead of probing (also env THAW_ACCEL). */
  accel?: Accel;
  /** Kernel + initrd used by the KVM probe VM. */
  probeAssets?: () => Promise<{ kernel: string; initrd: string }>;
  startTimeoutMs?: number;
  /** Address app port forwards bind to and the router connects to (default 127.0.0.1). */
  bindHost?: string;
  /** Address the router connects to when it differs from bindHost (a wildcard bind). */
  appHost?: string;
}


interface QemuVm extends VmHandle {
  qmp: Qmp;
  kill(): void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A state migration is ~100 KB (RAM stays in its file): anything near this is a wedged QEMU. */
const MIGRATION_DEADLINE_MS = 30_000;

export class QemuDriver implements Hypervisor {
  readonly name = 'qemu' as const;
  readonly diskFormat = 'qcow2' as const;
  readonly agentChannelBeforeResume = true;
  private readonly binary: string;
  private accelP: Promise<Accel> | null = null;

  constructor(private readonly opts: QemuOptions = {}) {
    this.binary = opts.binary ?? 'qemu-system-x86_64';
  }

  accel(): Promise<Accel> {
    const forced = this.opts.accel ?? (process.env.THAW_ACCEL as Accel | undefined);
    if (forced === 'kvm' || forced === 'tcg') return Promise.resolve(forced);
    this.accelP ??= probeAccel(this.binary, this.opts.probeAssets);
    return this.accelP;
  }

  /**
   * QEMU runs in spec.dir (its cwd): its own files there are named relatively,
   * and every file outside (kernel, initrd, a seed's memory image, the
   * overlay's backing disk, the state to load) is handed over as an inherited
   * descriptor and opened as /proc/self/fd/N, so a jailed VMM needs no path
   * to the node's folders (which it cannot traverse).
   */
  private async args(spec: VmSpec, incoming: boolean, files: HandedFiles): Promise<string[]> {
    const accel = await this.accel();
    const share = incoming ? 'off' : 'on';
    return [
      '-name', `thaw-${spec.id}`,
      '-machine', 'pc,memory-backend=mem',
      '-accel', accel,
      '-cpu', accel === 'kvm' ? 'host' : 'qemu64',
      '-m', `${spec.memMiB}M`, '-smp', String(spec.vcpus),
      '-object', `memory-backend-file,id=mem,size=${spec.memMiB}M,mem-path=${files.path('mem', spec.memFile)},share=${share}`,
      '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
      ...(spec.jail ? ['-sandbox', SANDBOX] : []),
      '-serial', 'file:console.log',
      '-kernel', files.path('kernel', spec.kernel), '-initrd', files.path('initrd', spec.initrd), '-append', spec.cmdline,
      // The root overlay is ephemeral (a thawed VM's writes are dropped; a baked VM's disk is
      // copied after `stop`, which still writes QEMU's caches back to the OS): guest flushes
      // need not reach the host's disk (cache.no-flush). Firecracker's default cache_type (Unsafe)
      // is the same. The overlay's backing disk is named explicitly (a handed-over descriptor).
      ...files.blockdev,
      '-device', 'virtio-blk-pci,drive=disk0',
      ...volumeArgs(spec),
      '-netdev', spec.tap
        // vnet_hdr=off: the same virtio-net features as user-mode, so a seed baked on either restores on either.
        ? `tap,id=net0,ifname=${spec.tap.name},script=no,downscript=no,vnet_hdr=off`
        : `user,id=net0,hostfwd=tcp:${this.opts.bindHost ?? '127.0.0.1'}:${spec.hostPort}-:${spec.guestPort}`,
      '-device', 'virtio-net-pci,netdev=net0,romfile=',
      '-device', 'virtio-serial-pci',
      '-chardev', 'socket,id=agent,path=agent.sock,server=on,wait=off',
      '-device', 'virtserialport,chardev=agent,name=thaw.agent',
      '-device', 'virtio-rng-pci',
      '-device', 'vmgenid,guid=auto',
      '-qmp', 'unix:qmp.sock,server=on,wait=off',
      ...(incoming ? ['-S', '-incoming', 'defer'] : []),
    ];
  }

  /** Spawn QEMU and connect QMP, racing process exit and a timeout. */
  private async start(spec: VmSpec, incoming: boolean, state?: string): Promise<QemuVm> {
    await mkdir(spec.dir, { recursive: true });
    const files = await handOver(spec, incoming, state);
    const args = await this.args(spec, incoming, files);
    const logPath = path.join(spec.dir, 'qemu.log');
    const log = createWriteStream(logPath);
    const [cmd, ...argv] = vmmCommand(spec, [this.binary, ...args]);
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(cmd!, argv, { cwd: spec.dir, stdio: ['ignore', 'pipe', 'pipe', ...files.fds], env: vmmEnv(spec) });
    } finally {
      files.close();
    }
    if (!child.stdout || !child.stderr) throw new ThawError('INTERNAL', 'QEMU spawned without pipes');
    // nsenter and setpriv exec (no fork): the child is QEMU. recover() reads this after a crash.
    if (child.pid) await writeFile(path.join(spec.dir, 'vmm.pid'), `${child.pid}\n`);
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', () => resolve({ code: -1, signal: null }));
    });
    const ac = new AbortController();
    // A progress window, not a wall-clock limit: renewed while QEMU uses CPU (a loaded host starts it slowly).
    const timeoutMs = this.opts.startTimeoutMs ?? 10_000;
    let stopTimer = () => {};
    let qmp: Qmp;
    try {
      qmp = await Promise.race([
        // query-status is answered only once machine init (kernel load, devices) succeeded.
        Qmp.connect(path.join(spec.dir, 'qmp.sock'), ac.signal).then(async (q) => {
          await q.execute('query-status');
          return q;
        }, () => new Promise<never>(() => {})), // QMP dropped: QEMU is exiting; the exit branch reports why
        exited.then(async () => {
          await new Promise((r) => log.end(r));
          const text = await readFile(logPath, 'utf8').catch(() => '');
          throw new ThawError('VM_START_FAILED', `QEMU exited during start: ${text.trim().slice(-600) || 'no output'}`, { details: { log: logPath } });
        }),
        new Promise<never>((_, reject) => {
          stopTimer = progressTimer(child.pid ?? -1, timeoutMs, timeoutMs * 0.05, () => reject(new ThawError('VM_TIMEOUT', `QEMU did not open QMP and made no progress for ${timeoutMs} ms`, { details: { log: logPath } })));
        }),
      ]);
    } catch (err) {
      stopTimer();
      ac.abort();
      child.kill('SIGKILL');
      await exited;
      throw err;
    }
    stopTimer();
    ac.abort();
    return {
      id: spec.id,
      spec,
      pid: child.pid ?? -1,
      consoleLog: path.join(spec.dir, 'console.log'),
      exited,
      appAddress: spec.tap?.address ?? { host: this.opts.appHost ?? this.opts.bindHost ?? '127.0.0.1', port: spec.hostPort },
      qmp,
      kill: () => child.kill('SIGKILL'),
    };
  }

  async boot(spec: VmSpec): Promise<VmHandle> {
    return this.start(spec, false);
  }

  async restore(spec: VmSpec, snap: SnapshotFiles): Promise<VmHandle> {
    if (path.resolve(spec.memFile) !== path.resolve(snap.mem)) throw new ThawError('INTERNAL', 'restore: spec.memFile must be the snapshot memory file');
    const vm = await this.start(spec, true, snap.state);
    try {
      await vm.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
      // The state file is QEMU's inherited descriptor STATE_FD (no exec: a sandboxed VMM cannot spawn).
      await vm.qmp.execute('migrate-incoming', { uri: `fd:${STATE_FD}` });
      const deadline = Date.now() + MIGRATION_DEADLINE_MS;
      for (;;) {
        if (Date.now() > deadline) throw new ThawError('VM_TIMEOUT', `restore did not finish within ${MIGRATION_DEADLINE_MS} ms`);
        const st = await vm.qmp.execute<{ status: string }>('query-status');
        if (st.status === 'paused' || st.status === 'postmigrate') break;
        if (st.status !== 'inmigrate') throw new ThawError('VM_START_FAILED', `restore ended in state ${st.status}`);
        const mig = await vm.qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
        if (mig.status === 'failed') throw new ThawError('VM_START_FAILED', `restore failed: ${mig['error-desc'] ?? 'unknown'}`);
        await sleep(2);
      }
    } catch (err) {
      const log = await readFile(path.join(spec.dir, 'qemu.log'), 'utf8').catch(() => '');
      await this.destroy(vm);
      if (log.trim() && err instanceof ThawError) throw new ThawError(err.code, `${err.message}; QEMU: ${log.trim().slice(-400)}`, { cause: err, details: err.details });
      throw err;
    }
    return vm;
  }

  async pause(vm: VmHandle): Promise<void> {
    await (vm as QemuVm).qmp.execute('stop');
  }

  async resume(vm: VmHandle): Promise<void> {
    await (vm as QemuVm).qmp.execute('cont');
  }

  async snapshot(vm: VmHandle, snap: SnapshotFiles): Promise<void> {
    const { qmp } = vm as QemuVm;
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    // QEMU writes the state to a unix socket the node listens on in the VM folder (Node
    // cannot pass a descriptor over QMP: no SCM_RIGHTS); no exec, no path outside the folder.
    const sink = await stateSink(vm.spec, snap.state);
    try {
      await qmp.execute('migrate', { uri: `unix:${STATE_SOCK}` });
      await this.waitMigrated(qmp);
      await sink.done;
    } finally {
      sink.close();
    }
    // Memory is already in the shared backing file; give it the snapshot's name.
    if (path.resolve(snap.mem) !== path.resolve(vm.spec.memFile)) await link(vm.spec.memFile, snap.mem);
  }

  private async waitMigrated(qmp: Qmp): Promise<void> {
    const deadline = Date.now() + MIGRATION_DEADLINE_MS;
    for (;;) {
      if (Date.now() > deadline) throw new ThawError('VM_TIMEOUT', `snapshot did not finish within ${MIGRATION_DEADLINE_MS} ms`);
      const mig = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (mig.status === 'completed') break;
      if (mig.status === 'failed' || mig.status === 'cancelled') throw new ThawError('QMP_ERROR', `snapshot failed: ${mig['error-desc'] ?? mig.status}`);
      await sleep(2);
    }
  }

  async openAgentChannel(vm: VmHandle): Promise<Duplex> {
    const sockPath = path.join(vm.spec.dir, 'agent.sock');
    return new Promise((resolve, reject) => {
      const s = net.connect(sockPath, () => resolve(s));
      s.once('error', (e) => reject(new ThawError('VM_GONE', `agent socket: ${e.message}`, { cause: e })));
    });
  }

  async destroy(vm: VmHandle): Promise<void> {
    const q = vm as QemuVm;
    try {
      q.qmp.close();
      q.kill();
      await Promise.race([vm.exited, new Promise((r) => setTimeout(r, 5000).unref())]);
    } catch {
      /* never throws */
    }
    await rm(vm.spec.dir, { recursive: true, force: true }).catch(() => {});
  }
}

/**
 * The app's volume as the second virtio-blk disk (/dev/vdb: its PCI slot follows the root's), on
 * the `vol0` block node (jail.ts: a handed-over read-write descriptor whose flushes reach the host
 * file). At a restore the device of the same id simply names the current file: the migration
 * stream holds device state, never a disk path or its contents.
 */
function volumeArgs(spec: VmSpec): string[] {
  if (!spec.volume) return [];
  return ['-device', 'virtio-blk-pci,drive=vol0,serial=thaw-volume'];
}
