// Shared by the VM tests: guest assets and the demo app's disk image are built
// once per machine and cached under a hash of their inputs; each test gets its
// own data folder and removes it, and checks that no QEMU process is left.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { cacheRoot, ensureAssets, nodeRootfs, type GuestAssets } from '../../src/guest/assets.ts';
import { NODE_RUNTIMES, nodeLineFor } from '../../src/guest/node-runtime.ts';
import { QemuDriver } from '../../src/hypervisor/qemu.ts';
import { buildAppImage } from '../../src/image/build.ts';
import type { NodeContext } from '../../src/lifecycle/context.ts';
import { nodeRunConfig, startScript } from '../../src/image/runconfig.ts';
import type { RunConfig } from '../../src/wire/run.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const HELLO = path.join(ROOT, 'examples', 'hello');

async function dirHash(dir: string): Promise<string> {
  const h = createHash('sha256');
  for (const f of (await readdir(dir, { recursive: true })).sort()) {
    const p = path.join(dir, f);
    try {
      h.update(f).update(await readFile(p));
    } catch {
      /* folder */
    }
  }
  return h.digest('hex').slice(0, 16);
}

/** A read-only disk image of an app folder (its base root is that of the Node line its engines.node picks), cached by assets + Node version + app content. */
export async function appImage(assets: GuestAssets, appDir: string): Promise<string> {
  const pkg = JSON.parse(await readFile(path.join(appDir, 'package.json'), 'utf8')) as { engines?: { node?: unknown } };
  const node = NODE_RUNTIMES[nodeLineFor(pkg.engines?.node)].version;
  const out = path.join(cacheRoot(), 'test-images', `${assets.key}-${node}-${await dirHash(appDir)}.img`);
  if (existsSync(out)) return out;
  await mkdir(path.dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  await buildAppImage({ appDir, baseRootfs: nodeRootfs, out: tmp, diskMiB: 1024, maxAppBytes: 256 << 20 });
  await chmod(tmp, 0o444);
  await rename(tmp, out);
  return out;
}

/** The run config the image builder computes for a Node app folder. */
export async function runOf(appDir: string): Promise<RunConfig> {
  return nodeRunConfig(startScript(await readFile(path.join(appDir, 'package.json'), 'utf8')));
}

export interface Fixture {
  assets: GuestAssets;
  /** How the demo app starts. */
  run: RunConfig;
  ctx: NodeContext;
  image: string;
  dataDir: string;
  cleanup(): Promise<void>;
}

export async function fixture(): Promise<Fixture> {
  const assets = await ensureAssets();
  const hv = new QemuDriver({ probeAssets: async () => assets });
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'thaw-vmtest-'));
  const ctx: NodeContext = {
    hv,
    assets,
    dataDir,
    log: pino({ level: process.env.THAW_TEST_LOG ?? 'silent' }),
    memMiB: 512,
    vcpus: Number(process.env.THAW_VM_VCPUS ?? 2),
    guestPort: 8080,
    appStartTimeoutMs: 60_000,
    bootTimeoutMs: 90_000,
  };
  return { assets, ctx, run: await runOf(HELLO), image: await appImage(assets, HELLO), dataDir, cleanup: () => rm(dataDir, { recursive: true, force: true }) };
}

/** QEMU processes whose command line mentions `needle` (a data dir or VM id). */
/**
 * QEMU processes (`pid cmdline` lines) whose command line or VM folder (THAW_VM_DIR in their
 * environment: a jailed QEMU names no host path) contains `needle`.
 */
export function qemuProcesses(needle: string): string[] {
  let lines: string[];
  try {
    lines = execFileSync('pgrep', ['-af', 'qemu-system'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  } catch {
    return [];
  }
  const vmDir = (pid: string) => {
    try {
      return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').find((e) => e.startsWith('THAW_VM_DIR=')) ?? '';
    } catch {
      return ''; // gone meanwhile
    }
  };
  return lines.filter((l) => l.includes(needle) || vmDir(l.split(' ')[0]!).includes(needle));
}

export async function getJson(port: number, init?: RequestInit & { host?: string }): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(`http://127.0.0.1:${port}/`, { ...init, headers: { ...(init?.host ? { host: init.host } : {}), ...(init?.headers as Record<string, string> | undefined) } });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* text */
  }
  return { status: res.status, body, headers: res.headers };
}

export async function countOccurrences(file: string, needle: string): Promise<number> {
  const buf = await readFile(file);
  const n = Buffer.from(needle);
  let count = 0;
  for (let i = buf.indexOf(n); i >= 0; i = buf.indexOf(n, i + 1)) count++;
  return count;
}
