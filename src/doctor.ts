// `thaw doctor`: check this host (QEMU, KVM verdict, guest kernel and assets,
// image tools, free disk), then a smoke run in a throw-away data folder:
// build the demo app's image, cold-boot it, one GET through the forwarded
// port, destroy, and make sure no QEMU process of that VM is left.
// Also exports the small toolkit the lifecycle benchmark shares.
import { firecrackerReport, type FirecrackerReport } from './hypervisor/firecracker-check.ts';
import type { Hypervisor } from './hypervisor/types.ts';
import { netSupport } from './network/host.ts';
import type { RunConfig } from './wire/run.ts';
import { execFile as execFileCb } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readdir, readFile, rm, statfs } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pino from 'pino';
import { dataDirFrom } from './cli/instance.ts';
import { asThawError, ThawError } from './errors.ts';
import { cacheRoot, ensureAssets, findKernel, type GuestAssets } from './guest/assets.ts';
import { lastProbe, probeFile } from './hypervisor/kvm-probe.ts';
import { QemuDriver } from './hypervisor/qemu.ts';
import type { VmHandle } from './hypervisor/types.ts';
import { buildAppImage } from './image/build.ts';
import type { NodeContext, RunningVm } from './lifecycle/context.ts';
import { destroyVm } from './lifecycle/destroy.ts';
import { wake } from './lifecycle/wake.ts';
import type { WakeRow } from './store/types.ts';

const execFile = promisify(execFileCb);
const TOOL_PATH = `${process.env.PATH ?? ''}:/usr/local/sbin:/usr/sbin:/sbin`;
export const DEMO_APP_DIR = fileURLToPath(new URL('../examples/hello/', import.meta.url));
const MIN_FREE_BYTES = 2 * 2 ** 30;

export interface Check {
  ok: boolean;
  detail: string;
  version?: string;
  ms?: number;
}
export interface DiskCheck extends Check {
  path: string;
  free_bytes: number | null;
}
export interface HostReport {
  qemu: Check;
  qemu_img: Check;
  kvm_device: Check;
  accel: 'kvm' | 'tcg';
  accel_reason: string;
  kernel: Check;
  assets: Check;
  mkfs_ext4: Check;
  busybox: Check;
  zstd: Check;
  tar: Check;
  /** OCI images: skopeo (pull) and umoci (unpack). */
  skopeo: Check;
  umoci: Check;
  disk_cache: DiskCheck;
  disk_data: DiskCheck;
  /** `--driver firecracker`: binary, jailer, KVM (informational). */
  firecracker: FirecrackerReport;
  /** Per-VM network namespaces + jailed VMM (isolated), or the user-mode fallback (NOT isolated: a warning, not a failure). */
  network: Check & { isolated: boolean };
}
export interface SmokeOk {
  boot_mode: 'cold';
  http_status: 200;
  steps: { image_ms: number; boot_ms: number; first_response_ms: number; destroy_ms: number; total_ms: number };
  wake_record: WakeRow;
}
export type SmokeReport = SmokeOk | { error: { code: string; message: string } };
export interface DoctorReport {
  ok: boolean;
  host: HostReport;
  smoke: SmokeReport;
}

// --- toolkit shared with src/bench/lifecycle.ts ---------------------------------

/** The node settings `thaw up` uses, over a private data folder. */
export function demoContext(dataDir: string, assets: GuestAssets, hv: Hypervisor = new QemuDriver({ probeAssets: async () => assets })): NodeContext {
  return {
    hv, assets, dataDir, log: pino({ level: 'warn' }, pino.destination(2)),
    memMiB: Number(process.env.THAW_VM_MEM_MIB ?? 512), vcpus: Number(process.env.THAW_VM_VCPUS ?? 2), guestPort: 8080,
    appStartTimeoutMs: 60_000, bootTimeoutMs: 90_000,
  };
}

/** Build examples/hello into a read-only raw image at `out`; returns the build's ms. */
export async function buildDemoImage(assets: GuestAssets, out: string): Promise<{ ms: number; run: RunConfig }> {
  const r = await buildAppImage({ appDir: DEMO_APP_DIR, baseRootfs: assets.rootfs, out, diskMiB: Number(process.env.THAW_DISK_MIB ?? 1024), maxAppBytes: 512 << 20 });
  await chmod(out, 0o444);
  return { ms: r.ms, run: r.run };
}

export interface HttpResult {
  status: number;
  body: string;
}

/** One request to HOST:port (default 127.0.0.1) without keep-alive (nothing lingers after the VM is gone). */
export function httpRequest(port: number, opts: { method?: string; body?: string; timeoutMs?: number; host?: string } = {}): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: opts.host ?? '127.0.0.1', port, path: '/', method: opts.method ?? 'GET', agent: false, timeout: opts.timeoutMs ?? 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from 127.0.0.1:${port} within ${opts.timeoutMs ?? 10_000} ms`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** GET / until it answers 200 (the forwarded port may refuse for a moment); the JSON body. */
export async function getUntil200(port: number, timeoutMs = 30_000, host = '127.0.0.1'): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no attempt';
  for (;;) {
    try {
      const r = await httpRequest(port, { host, timeoutMs: Math.max(1000, deadline - Date.now()) });
      if (r.status === 200) {
        try {
          return JSON.parse(r.body) as Record<string, unknown>;
        } catch {
          throw new ThawError('APP_CRASHED', `GET / answered 200 but not JSON: ${r.body.slice(0, 200)}`);
        }
      }
      last = `HTTP ${r.status}`;
    } catch (err) {
      if (err instanceof ThawError) throw err;
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new ThawError('VM_TIMEOUT', `GET / through 127.0.0.1:${port} gave no 200 within ${timeoutMs} ms (last: ${last})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** PIDs of live processes whose command line names this VM (QEMU runs with -name thaw-<id>). */
export async function vmProcesses(vm: VmHandle): Promise<number[]> {
  const found: number[] = [];
  for (const d of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(d)) continue;
    const cmd = await readFile(`/proc/${d}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(`\0thaw-${vm.id}\0`)) found.push(Number(d));
  }
  return found;
}

// --- host checks -------------------------------------------------------------------

async function tool(bin: string, args: string[], pick: (out: string) => string = (s) => s.split('\n')[0] ?? ''): Promise<Check> {
  try {
    const { stdout, stderr } = await execFile(bin, args, { env: { ...process.env, PATH: TOOL_PATH } });
    const version = pick(`${stdout}${stderr}`.trim()).trim();
    return { ok: true, version, detail: version };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { ok: false, detail: e.code === 'ENOENT' ? `${bin} is not installed (npm run setup)` : `${bin} ${args.join(' ')} failed: ${e.message.split('\n')[0]}` };
  }
}

async function diskFree(dir: string): Promise<DiskCheck> {
  let p = path.resolve(dir);
  while (!existsSync(p) && path.dirname(p) !== p) p = path.dirname(p);
  try {
    const s = await statfs(p);
    const free = s.bavail * s.bsize;
    const ok = free >= MIN_FREE_BYTES;
    return { ok, path: dir, free_bytes: free, detail: `${(free / 2 ** 30).toFixed(1)} GiB free${ok ? '' : ` (want >= ${MIN_FREE_BYTES / 2 ** 30} GiB)`}` };
  } catch (err) {
    return { ok: false, path: dir, free_bytes: null, detail: `statfs failed: ${(err as Error).message}` };
  }
}

async function accelVerdict(hv: QemuDriver, assets: GuestAssets | null): Promise<{ accel: 'kvm' | 'tcg'; reason: string }> {
  const forced = process.env.THAW_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return { accel: forced, reason: `forced by THAW_ACCEL=${forced}` };
  if (!existsSync('/dev/kvm')) return { accel: 'tcg', reason: '/dev/kvm is missing: software emulation (TCG)' };
  if (!assets) return { accel: 'tcg', reason: 'guest assets missing: the KVM probe could not run' };
  const accel = await hv.accel(); // probes once (cached per QEMU binary and kernel)
  const exact = await readFile(await probeFile('qemu-system-x86_64', assets.kernel), 'utf8').then((t) => JSON.parse(t) as { reason: string }, () => null);
  const probe = exact ?? (await lastProbe());
  return { accel, reason: probe?.reason ?? 'no probe record' };
}

async function hostChecks(dataDir: string): Promise<{ host: HostReport; assets: GuestAssets | null; hv: QemuDriver | null }> {
  const [qemu, qemu_img, mkfs_ext4, busybox, zstd, tar, skopeo, umoci] = await Promise.all([
    tool('qemu-system-x86_64', ['--version']),
    tool('qemu-img', ['--version']),
    tool('mkfs.ext4', ['-V']),
    tool('busybox', ['--help']),
    tool('zstd', ['--version'], (s) => /v[\d.]+/.exec(s)?.[0] ?? s),
    tool('tar', ['--version']),
    tool('skopeo', ['--version']),
    tool('umoci', ['--version']),
  ]);
  const kvmDev = existsSync('/dev/kvm');
  const kvm_device: Check = { ok: true, detail: kvmDev ? '/dev/kvm present (usable only if the probe says kvm)' : '/dev/kvm absent: VMs use TCG' };
  const kernel: Check = await findKernel().then(
    (k) => ({ ok: true, version: k.version, detail: `${k.vmlinuz} with ${k.modules}` }),
    (err) => ({ ok: false, detail: asThawError(err).message }),
  );
  let assets: GuestAssets | null = null;
  const t0 = performance.now();
  const assetsCheck: Check = await ensureAssets().then(
    (a) => ((assets = a), { ok: true, ms: Math.round(performance.now() - t0), detail: a.dir }),
    (err) => ({ ok: false, ms: Math.round(performance.now() - t0), detail: asThawError(err).message }),
  );
  const a = assets as GuestAssets | null;
  const hv = qemu.ok ? new QemuDriver({ probeAssets: async () => a! }) : null;
  const verdict = hv ? await accelVerdict(hv, a) : { accel: 'tcg' as const, reason: 'QEMU is missing' };
  const [disk_cache, disk_data, net] = await Promise.all([diskFree(cacheRoot()), diskFree(dataDir), netSupport()]);
  const network = {
    ok: true,
    isolated: net.isolated,
    detail: net.isolated ? 'one network namespace + TAP per VM, nftables policy, QEMU jailed (own uid, seccomp)' : `WARNING: ${net.reason}`,
  };
  const host: HostReport = {
    qemu, qemu_img, kvm_device, accel: verdict.accel, accel_reason: verdict.reason, kernel, assets: assetsCheck,
    mkfs_ext4, busybox, zstd, tar, skopeo, umoci, disk_cache, disk_data, network, firecracker: await firecrackerReport(verdict.accel),
  };
  return { host, assets: a, hv };
}

// --- smoke run ------------------------------------------------------------------------

async function smoke(assets: GuestAssets, hv: QemuDriver): Promise<SmokeReport> {
  const t0 = performance.now();
  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-doctor-'));
  const ctx = demoContext(path.join(work, 'data'), assets, hv);
  let run: RunningVm | null = null;
  const lap = (from: number) => Math.round(performance.now() - from);
  try {
    const image = path.join(work, 'app.img');
    const { ms: image_ms, run: runConfig } = await buildDemoImage(assets, image);
    let t = performance.now();
    const w = await wake(ctx, { app: 'doctor', deployId: 'doctor', image, seedDir: null, seedSource: 'none', env: { WHO: 'doctor' }, run: runConfig });
    run = w.run;
    const boot_ms = lap(t);
    t = performance.now();
    const body = await getUntil200(run.vm.appAddress.port);
    if (body.who !== 'doctor') throw new ThawError('APP_CRASHED', `demo app answered ${JSON.stringify(body)}, expected who=doctor`);
    const first_response_ms = lap(t);
    t = performance.now();
    const vm = run.vm;
    await destroyVm(ctx, run);
    run = null;
    const left = await vmProcesses(vm);
    if (left.length > 0) throw new ThawError('INTERNAL', `QEMU process(es) ${left.join(', ')} of VM ${vm.id} still run after destroy`);
    const destroy_ms = lap(t);
    return { boot_mode: 'cold', http_status: 200, steps: { image_ms, boot_ms, first_response_ms, destroy_ms, total_ms: lap(t0) }, wake_record: w.record };
  } catch (err) {
    const e = asThawError(err);
    return { error: { code: e.code, message: e.message } };
  } finally {
    if (run) {
      const vm = run.vm;
      await destroyVm(ctx, run);
      for (const pid of await vmProcesses(vm)) process.kill(pid, 'SIGKILL');
    }
    await rm(work, { recursive: true, force: true });
  }
}

// --- output ---------------------------------------------------------------------------

function checklist(r: DoctorReport): string {
  const mark = (ok: boolean) => (ok ? '[ok]  ' : '[FAIL]');
  const h = r.host;
  const rows: [string, Check][] = [
    ['qemu-system-x86_64', h.qemu], ['qemu-img', h.qemu_img], ['/dev/kvm', h.kvm_device], ['guest kernel', h.kernel],
    ['guest assets', { ...h.assets, detail: `${h.assets.detail} (${h.assets.ms ?? 0} ms)` }], ['mkfs.ext4', h.mkfs_ext4], ['busybox', h.busybox],
    ['zstd', h.zstd], ['tar', h.tar], ['skopeo', h.skopeo], ['umoci', h.umoci], ['disk (cache)', { ...h.disk_cache, detail: `${h.disk_cache.path}: ${h.disk_cache.detail}` }],
    ['disk (data)', { ...h.disk_data, detail: `${h.disk_data.path}: ${h.disk_data.detail}` }],
  ];
  const lines = rows.map(([name, c]) => `${mark(c.ok)} ${name.padEnd(19)} ${c.detail}`);
  lines.push(`[info] ${'accelerator'.padEnd(19)} ${h.accel}: ${h.accel_reason}`);
  const fc = h.firecracker;
  lines.push(`[info] ${'firecracker'.padEnd(19)} ${fc.usable ? 'usable' : 'not usable'}: binary ${fc.firecracker.detail}; jailer ${fc.jailer.detail}; KVM ${fc.kvm.detail}`);
  lines.push(`${h.network.isolated ? '[ok]  ' : '[WARN]'} ${'tenant isolation'.padEnd(19)} ${h.network.detail}`);
  if ('error' in r.smoke) lines.push(`[FAIL] ${'smoke run'.padEnd(19)} ${r.smoke.error.code}: ${r.smoke.error.message}`);
  else {
    const s = r.smoke.steps;
    lines.push(`[ok]   ${'smoke run'.padEnd(19)} cold boot, GET / -> 200: image ${s.image_ms} ms, boot ${s.boot_ms} ms, first response ${s.first_response_ms} ms, destroy ${s.destroy_ms} ms, total ${s.total_ms} ms`);
  }
  lines.push(r.ok ? 'doctor: all checks passed' : 'doctor: some checks FAILED');
  return `${lines.join('\n')}\n`;
}

export async function runDoctor(opts: { json: boolean; dataDir?: string }): Promise<DoctorReport> {
  const { host, assets, hv } = await hostChecks(opts.dataDir ?? dataDirFrom({}));
  const required = [host.qemu, host.qemu_img, host.kernel, host.assets, host.mkfs_ext4, host.busybox, host.zstd, host.tar, host.skopeo, host.umoci, host.disk_cache, host.disk_data];
  const smokeReport: SmokeReport =
    assets && hv && host.qemu_img.ok && host.mkfs_ext4.ok
      ? await smoke(assets, hv)
      : { error: { code: 'HOST_MISSING_TOOL', message: 'smoke run skipped: a required host check failed' } };
  const report: DoctorReport = { ok: required.every((c) => c.ok) && !('error' in smokeReport), host, smoke: smokeReport };
  process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : checklist(report));
  if (!report.ok) process.exitCode = 2;
  return report;
}
