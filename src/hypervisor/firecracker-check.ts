// `thaw doctor`'s Firecracker section: is the binary there, is its jailer, and
// can it use KVM (Firecracker has no software emulation). Informational: QEMU
// remains the default driver, so none of these fail the doctor.
import { execFile as execFileCb } from 'node:child_process';
import { open } from 'node:fs/promises';
import { promisify } from 'node:util';

const execFile = promisify(execFileCb);

export interface FcCheck {
  ok: boolean;
  detail: string;
  version?: string;
}

export interface FirecrackerReport {
  firecracker: FcCheck;
  jailer: FcCheck;
  kvm: FcCheck;
  /** The binary and KVM: `--driver firecracker` can work here (never run on a real host yet); the jailer is used when present. */
  usable: boolean;
}

async function version(bin: string): Promise<FcCheck> {
  try {
    const { stdout } = await execFile(bin, ['--version'], { timeout: 5000 });
    const v = stdout.trim().split('\n')[0] ?? '';
    return { ok: true, version: v, detail: v };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { ok: false, detail: e.code === 'ENOENT' ? `${bin} not found (set THAW_FIRECRACKER / THAW_JAILER or put it on PATH)` : `${bin} --version failed: ${e.message.split('\n')[0]}` };
  }
}

/**
 * `qemuAccel` is the QEMU KVM probe's verdict (a VM booted under KVM, or not):
 * /dev/kvm opening read-write is necessary but, under nested virtualization, not enough.
 */
export async function firecrackerReport(qemuAccel: 'kvm' | 'tcg', kvmDevice = '/dev/kvm'): Promise<FirecrackerReport> {
  const noJailer: FcCheck = { ok: false, detail: 'THAW_JAILER=none: VMs run under the nsenter/setpriv/mount jail instead' };
  const [firecracker, jailer] = await Promise.all([version(process.env.THAW_FIRECRACKER ?? 'firecracker'), process.env.THAW_JAILER === 'none' ? noJailer : version(process.env.THAW_JAILER ?? 'jailer')]);
  const kvm: FcCheck = await open(kvmDevice, 'r+').then(
    async (fh) => {
      await fh.close();
      return qemuAccel === 'kvm'
        ? { ok: true, detail: `${kvmDevice} opens read-write and a probe VM booted under KVM` }
        : { ok: false, detail: `${kvmDevice} opens read-write, but the probe VM did not boot under KVM` };
    },
    (err: Error) => ({ ok: false, detail: `${kvmDevice} cannot be opened read-write: ${err.message}` }),
  );
  // The jailer is optional: without it, VMs run under the same nsenter/setpriv/mount jail as QEMU.
  return { firecracker, jailer, kvm, usable: firecracker.ok && kvm.ok };
}
