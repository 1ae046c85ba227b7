// QEMU driver (QMP over a unix socket). Guest memory lives in a file
// (memory-backend-file): a cold boot maps it shared, so at bake time the file
// IS the memory image; a restore maps the seed's file privately (copy-on-write),
// so any number of thaws leave it unchanged. Migration runs with
// x-ignore-shared, so the state stream is only CPU/device state (~100 KB).
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import { link, mkdir, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { ThawError } from '../errors.ts';
import { probeAccel } from './kvm-probe.ts';
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
}

/** `setpriv --pdeathsig KILL` makes QEMU die with the node process (a SIGKILLed node leaves no VM running). */
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));

interface QemuVm extends VmHandle {
  qmp: Qmp;
  kill(): void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A state migration is ~100 KB (RAM stays in its file): anything near this is a wedged QEMU. */
const MIGRATION_DEADLINE_MS = 30_000;

export class QemuDriver implements Hypervisor {
  readonly name = 'qemu' as const;
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

  private async args(spec: VmSpec, incoming: boolean): Promise<string[]> {
    const accel = await this.accel();
    const share = incoming ? 'off' : 'on';
    return [
      '-name', `thaw-${spec.id}`,
      '-machine', 'pc,memory-backend=mem',
      '-accel', accel,
      '-cpu', accel === 'kvm' ? 'host' : 'qemu64',
      '-m', `${spec.memMiB}M`, '-smp', String(spec.vcpus),
      '-object', `memory-backend-file,id=mem,size=${spec.memMiB}M,mem-path=${spec.memFile},share=${share}`,
      '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
      '-serial', `file:${path.join(spec.dir, 'console.log')}`,
      '-kernel', spec.kernel, '-initrd', spec.initrd, '-append', spec.cmdline,
      // The root overlay is ephemeral (a thawed VM's writes are dropped; a baked VM's disk is
      // copied after `stop`, which still writes QEMU's caches back to the OS): guest flushes
      // need not reach the host's disk. Firecracker's default cache_type (Unsafe) is the same.
      '-drive', `if=none,id=disk0,file=${spec.disk},format=${spec.diskFormat},cache=unsafe`,
      '-device', 'virtio-blk-pci,drive=disk0',
      ...volumeArgs(spec),
      '-netdev', `user,id=net0,hostfwd=tcp:${this.opts.bindHost ?? '127.0.0.1'}:${spec.hostPort}-:${spec.guestPort}`,
      '-device', 'virtio-net-pci,netdev=net0,romfile=',
      '-device', 'virtio-serial-pci',
      '-chardev', `socket,id=agent,path=${path.join(spec.dir, 'agent.sock')},server=on,wait=off`,
      '-device', 'virtserialport,chardev=agent,name=thaw.agent',
      '-device', 'virtio-rng-pci',
      '-device', 'vmgenid,guid=auto',
      '-qmp', `unix:${path.join(spec.dir, 'qmp.sock')},server=on,wait=off`,
      '-pidfile', path.join(spec.dir, 'vmm.pid'),
      ...(incoming ? ['-S', '-incoming', 'defer'] : []),
    ];
  }

  /** Spawn QEMU and connect QMP, racing process exit and a timeout. */
  private async start(spec: VmSpec, incoming: boolean): Promise<QemuVm> {
    await mkdir(spec.dir, { recursive: true });
    const args = await this.args(spec, incoming);
    const logPath = path.join(spec.dir, 'qemu.log');
    const log = createWriteStream(logPath);
    const child = SETPRIV
      ? spawn(SETPRIV, ['--pdeathsig', 'KILL', '--', this.binary, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(this.binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', () => resolve({ code: -1, signal: null }));
    });
    const ac = new AbortController();
    const timeoutMs = this.opts.startTimeoutMs ?? (Number(process.env.THAW_QEMU_START_TIMEOUT_MS) || 10_000);
    let timer: NodeJS.Timeout | undefined;
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
          timer = setTimeout(() => reject(new ThawError('VM_TIMEOUT', `QEMU did not open QMP within ${timeoutMs} ms`, { details: { log: logPath } })), timeoutMs);
        }),
      ]);
    } catch (err) {
      clearTimeout(timer);
      ac.abort();
      child.kill('SIGKILL');
      await exited;
      throw err;
    }
    clearTimeout(timer);
    ac.abort();
    return {
      id: spec.id,
      spec,
      pid: child.pid ?? -1,
      consoleLog: path.join(spec.dir, 'console.log'),
      exited,
      appAddress: { host: this.opts.bindHost ?? '127.0.0.1', port: spec.hostPort },
      qmp,
      kill: () => child.kill('SIGKILL'),
    };
  }

  async boot(spec: VmSpec): Promise<VmHandle> {
    return this.start(spec, false);
  }

  async restore(spec: VmSpec, snap: SnapshotFiles): Promise<VmHandle> {
    if (path.resolve(spec.memFile) !== path.resolve(snap.mem)) throw new ThawError('INTERNAL', 'restore: spec.memFile must be the snapshot memory file');
    const vm = await this.start(spec, true);
    try {
      await vm.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
      await vm.qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(snap.state)}` });
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
      await this.destroy(vm);
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
    await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(snap.state)}` });
    const deadline = Date.now() + MIGRATION_DEADLINE_MS;
    for (;;) {
      if (Date.now() > deadline) throw new ThawError('VM_TIMEOUT', `snapshot did not finish within ${MIGRATION_DEADLINE_MS} ms`);
      const mig = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (mig.status === 'completed') break;
      if (mig.status === 'failed' || mig.status === 'cancelled') throw new ThawError('QMP_ERROR', `snapshot failed: ${mig['error-desc'] ?? mig.status}`);
      await sleep(2);
    }
    // Memory is already in the shared backing file; give it the snapshot's name.
    if (path.resolve(snap.mem) !== path.resolve(vm.spec.memFile)) await link(vm.spec.memFile, snap.mem);
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
 * The app's volume as the second virtio-blk disk (/dev/vdb: its PCI slot follows the root's).
 * Unlike the root overlay its writes must survive a crash: cache=writeback honours the guest's
 * flushes (fsync reaches the host file). At a restore the drive of the same id simply names the
 * current file: the migration stream holds device state, never a disk path or its contents.
 */
function volumeArgs(spec: VmSpec): string[] {
  if (!spec.volume) return [];
  return ['-drive', `if=none,id=vol0,file=${spec.volume},format=raw,cache=writeback,discard=unmap`, '-device', 'virtio-blk-pci,drive=vol0,serial=thaw-volume'];
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
