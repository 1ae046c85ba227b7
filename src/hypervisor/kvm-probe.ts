// Does KVM really work here? /dev/kvm existing proves nothing (on this host it
// is nested software virtualization and a stock kernel hangs under it). So the
// probe boots the guest kernel + initramfs with thaw.probe=1 under -accel kvm
// and waits for the initramfs to print THAW-PROBE-OK. The verdict is cached per
// QEMU binary and kernel, and shown by `thaw doctor`.
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cacheRoot } from '../guest/assets.ts';
import type { Accel } from './types.ts';

export interface ProbeResult {
  accel: Accel;
  reason: string;
  ms: number;
  at: string;
}

const PROBE_TIMEOUT_MS = 20_000;

export async function probeFile(binary: string, kernel: string): Promise<string> {
  const [k] = await Promise.all([stat(kernel)]);
  const key = `${path.basename(binary)}-${k.size}`.replace(/[^a-zA-Z0-9.-]/g, '_');
  return path.join(cacheRoot(), 'kvm-probe', `${key}.json`);
}

export async function lastProbe(): Promise<ProbeResult | null> {
  try {
    const dir = path.join(cacheRoot(), 'kvm-probe');
    const files = await readdir(dir);
    const f = files.sort().at(-1);
    return f ? (JSON.parse(await readFile(path.join(dir, f), 'utf8')) as ProbeResult) : null;
  } catch {
    return null;
  }
}

export async function probeAccel(binary: string, assets?: () => Promise<{ kernel: string; initrd: string }>): Promise<Accel> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return 'tcg';
  }
  if (!assets) return 'tcg';
  const { kernel, initrd } = await assets();
  const file = await probeFile(binary, kernel);
  try {
    return (JSON.parse(await readFile(file, 'utf8')) as ProbeResult).accel;
  } catch {
    /* not probed yet */
  }
  const t0 = Date.now();
  const ok = await new Promise<{ ok: boolean; why: string }>((resolve) => {
    const p = spawn(binary, ['-accel', 'kvm', '-cpu', 'host', '-machine', 'pc', '-m', '256M', '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
      '-serial', 'stdio', '-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet panic=-1 thaw.probe=1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      resolve({ ok: false, why: `probe VM under KVM did not print THAW-PROBE-OK within ${PROBE_TIMEOUT_MS} ms (KVM present but not usable)` });
    }, PROBE_TIMEOUT_MS);
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('THAW-PROBE-OK')) {
        clearTimeout(timer);
        p.kill('SIGKILL');
        resolve({ ok: true, why: 'probe VM booted under KVM' });
      }
    });
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', (e) => {
      clearTimeout(timer);
      resolve({ ok: false, why: `cannot run ${binary}: ${e.message}` });
    });
    p.on('exit', () => {
      clearTimeout(timer);
      resolve({ ok: out.includes('THAW-PROBE-OK'), why: out.includes('THAW-PROBE-OK') ? 'probe VM booted under KVM' : `QEMU exited under KVM: ${out.trim().slice(-200)}` });
    });
  });
  const result: ProbeResult = { accel: ok.ok ? 'kvm' : 'tcg', reason: ok.why, ms: Date.now() - t0, at: new Date().toISOString() };
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify(result, null, 2));
  return result.accel;
}
