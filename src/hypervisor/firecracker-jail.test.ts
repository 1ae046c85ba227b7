// The Firecracker driver in a VM's own network namespace, jailed, with a
// volume: against the strict fake (firecracker-fake/), which runs inside the
// real namespace as the real VMM uid (the wrappers the driver builds run for
// real), checks that the TAP it is given exists there and may be used by it,
// and opens every file as that uid inside its jail. Both ways are covered: the
// nsenter/setpriv/mount jail shared with QEMU, and Firecracker's jailer (the
// fake jailer follows docs/jailer.md). Needs root (namespaces, uids).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { isThawError } from '../errors.ts';
import { FirecrackerDriver, GUEST_MAC, type FirecrackerOptions } from './firecracker.ts';
import { fakeFirecracker } from './firecracker-fake/spawn.ts';
import { jailId } from './firecracker-jailer.ts';
import { processJail, VMM_GID } from './jail.ts';
import type { VmSpec } from './types.ts';

const root = mkdtempSync(join(tmpdir(), 'thaw-fcjail-'));
const NS = `thvfc-${process.pid % 100000}`;
const UID = 200_000 + 9_000 + (process.pid % 900);
const OTHER = UID + 1;
/** The fake runs as a VMM uid: the repository (the fake's bundle, node_modules) must be reachable by any user. */
function reachableByAll(dir: string): boolean {
  for (let d = dir; ; d = dirname(d)) {
    if ((statSync(d).mode & 0o001) === 0) return false;
    if (d === dirname(d)) return true;
  }
}
const isRoot = process.getuid?.() === 0 && reachableByAll(fileURLToPath(new URL('../..', import.meta.url)));
const FC_BIN = join(root, 'firecracker');
const JAILER_BIN = join(root, 'jailer');
const KERNEL = join(root, 'vmlinux');
const INITRD = join(root, 'initrd');
if (isRoot) {
  for (const [f, text] of [[FC_BIN, '#!/bin/false\n'], [JAILER_BIN, '#!/bin/false\n'], [KERNEL, 'kernel'], [INITRD, 'initrd']] as const) writeFileSync(f, text, { mode: 0o755 });
  execFileSync('ip', ['netns', 'add', NS]);
  execFileSync('ip', ['-n', NS, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'user', String(UID), 'group', String(VMM_GID)]);
  execFileSync('ip', ['-n', NS, 'tuntap', 'add', 'dev', 'tap9', 'mode', 'tap', 'user', String(OTHER), 'group', String(VMM_GID)]);
}
after(() => {
  if (isRoot) execFileSync('ip', ['netns', 'del', NS]);
  rmSync(root, { recursive: true, force: true });
});

type Rec = { method?: string; url?: string; body?: Record<string, unknown>; uid?: number; netns?: string; chroot?: string | null; visible?: string | null; drive?: string; how?: string; ino?: number; mem?: string; writable?: boolean; jailer?: string[]; fault?: string };

let n = 0;
function setup(opts: FirecrackerOptions = {}, tap = 'tap0') {
  const id = `fcj-${++n}`;
  const logFile = join(root, `${id}.jsonl`);
  writeFileSync(logFile, '');
  const fake = fakeFirecracker({ FAKE_LOG: logFile, FAKE_BOOT_MS: '100' });
  const driver = new FirecrackerDriver({ binary: FC_BIN, startTimeoutMs: 30_000, agentConnectTimeoutMs: 15_000, ...opts, spawn: fake.spawn });
  const records = (): Rec[] => readFileSync(logFile, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Rec);
  const calls = () => records().filter((r) => r.method && !(r.method === 'GET' && r.url === '/'));
  return { driver, fake, records, calls, spec: (name: string, volume?: string) => vmSpec(`${id}-${name}`, tap, volume) };
}

/** A VM folder (root-only, as the node keeps them) with its raw disk, in the namespace, as the VM's uid. */
function vmSpec(id: string, tap: string, volume?: string): VmSpec {
  const dir = join(root, 'vms', id);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'disk.raw'), Buffer.alloc(8192));
  return {
    id, dir, kernel: KERNEL, initrd: INITRD, cmdline: 'console=ttyS0', memMiB: 256, vcpus: 1, disk: join(dir, 'disk.raw'), diskFormat: 'raw', memFile: join(dir, 'mem.ram'),
    guestPort: 8080, hostPort: 0, tap: { netns: NS, name: tap, address: { host: '10.213.9.2', port: 8080 } }, jail: { uid: UID, gid: VMM_GID }, ...(volume ? { volume } : {}),
  };
}

function volumeFile(name: string): string {
  const f = join(root, 'volumes', name);
  mkdirSync(join(root, 'volumes'), { recursive: true, mode: 0o700 });
  writeFileSync(f, Buffer.alloc(16384));
  return f;
}

async function hello(ch: NodeJS.ReadWriteStream): Promise<{ agent_pid: number }> {
  let got = '';
  while (!got.includes('\n')) got += String((await once(ch, 'data'))[0]);
  return (JSON.parse(got.slice(0, got.indexOf('\n'))) as { hello: { agent_pid: number } }).hello;
}

/** Boot with a volume, bake into a seed the way bake.ts leaves it (root's, 0444), then thaw it with the app's new volume file. */
async function bakeAndThaw(s: ReturnType<typeof setup>) {
  const vol1 = volumeFile(`${s.spec('x').id}-v1.ext4`);
  const spec = s.spec('cold', vol1);
  const vm = await s.driver.boot(spec);
  const ch = await s.driver.openAgentChannel(vm);
  const baked = await hello(ch);
  ch.destroy();
  const seed = join(root, 'seeds', spec.id);
  mkdirSync(seed, { recursive: true, mode: 0o700 });
  const snap = { state: join(seed, 'state.bin'), mem: join(seed, 'mem.ram') };
  await s.driver.pause(vm);
  await s.driver.snapshot(vm, snap);
  await copyFile(spec.disk, join(seed, 'disk.img'));
  await s.driver.destroy(vm);
  for (const f of [snap.state, snap.mem]) {
    assert.equal(statSync(f).uid, 0, `${f} is root's once out of the VMM's folder`);
    chmodSync(f, 0o444);
  }
  // The app's volume now lives in another file (a restore or move): the thaw must use it, not the old one.
  const vol2 = volumeFile(`${spec.id}-v2.ext4`);
  const spec2 = s.spec('thaw', vol2);
  await copyFile(join(seed, 'disk.img'), spec2.disk);
  const thawed = await s.driver.restore({ ...spec2, memFile: snap.mem }, snap);
  return { vm, spec, vol1, thawed, spec2, vol2, snap, baked };
}

describe('Firecracker in its own namespace, jailed', { skip: isRoot ? false : 'needs root (namespaces, uids) and a repository every user can reach' }, () => {
  test('without the jailer: nsenter + setpriv + mount jail; TAP tap0 and the volume drive; a thaw re-points the volume; seeds read-only to the VMM', async (t) => {
    const s = setup();
    const r = await bakeAndThaw(s);
    t.after(() => s.driver.destroy(r.thawed));
    const argv = s.fake.spawned[0]!.argv;
    assert.ok(argv.includes(`--net=/run/netns/${NS}`), argv.join(' '));
    assert.deepEqual(argv.slice(argv.indexOf('--reuid'), argv.indexOf('--reuid') + 4), ['--reuid', String(UID), '--regid', String(VMM_GID)]);
    assert.ok(argv.includes('thaw-jail'), 'the mount jail is part of the command line');
    const starts = s.records().filter((x) => x.netns);
    assert.equal(starts.length, 2);
    const nsIno = statSync(`/run/netns/${NS}`).ino;
    for (const st of starts) {
      assert.equal(st.uid, UID, 'Firecracker runs as the VM uid');
      assert.equal(st.netns, `net:[${nsIno}]`, 'in the VM namespace');
      assert.ok(st.visible, 'it would see only its folder and /usr');
    }
    const boot = s.calls().find((c) => c.url === '/network-interfaces/eth0');
    assert.deepEqual(boot?.body, { iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: GUEST_MAC });
    assert.deepEqual(s.calls().find((c) => c.url === '/drives/volume')?.body, { drive_id: 'volume', path_on_host: 'volume.raw', is_root_device: false, is_read_only: false, cache_type: 'Writeback', io_engine: 'Sync' });
    checkThaw(s, r);
    assert.deepEqual(r.thawed.appAddress, { host: '10.213.9.2', port: 8080 }, 'the router reaches the app at the veth address');
    await s.driver.resume(r.thawed);
    const ch = await s.driver.openAgentChannel(r.thawed);
    t.after(() => ch.destroy());
    assert.equal((await hello(ch)).agent_pid, r.baked.agent_pid, 'the frozen agent answers');
  });

  test('with the jailer: --id, --exec-file, --uid/--gid, --chroot-base-dir, --netns; files placed in the jail root', async (t) => {
    const s = setup({ jailer: { binary: JAILER_BIN } });
    const r = await bakeAndThaw(s);
    t.after(() => s.driver.destroy(r.thawed));
    const id = jailId(r.spec.id);
    assert.deepEqual(s.fake.spawned[0]!.argv, [
      JAILER_BIN, '--id', id, '--exec-file', FC_BIN, '--uid', String(UID), '--gid', String(VMM_GID),
      '--chroot-base-dir', join(r.spec.dir, 'jail'), '--netns', `/var/run/netns/${NS}`, '--', '--api-sock', '/fc.sock',
    ]);
    const jailRoot = join(r.spec2.dir, 'jail', 'firecracker', jailId(r.spec2.id), 'root');
    const st = s.records().filter((x) => x.netns).at(-1)!;
    assert.equal(st.chroot, jailRoot);
    assert.equal(st.uid, UID);
    assert.equal(st.netns, `net:[${statSync(`/run/netns/${NS}`).ino}]`);
    assert.equal(statSync(jailRoot).uid, UID, 'the jailer chowned its root');
    assert.ok(existsSync(join(jailRoot, 'fc.sock')) && existsSync(join(jailRoot, 'vsock.sock')), 'sockets inside the jail');
    for (const f of ['vmlinux', 'initrd', 'disk.raw', 'volume.raw', 'seed-state.bin', 'seed-mem.ram']) assert.ok(existsSync(join(jailRoot, f)), f);
    assert.equal((await processJail(r.thawed.pid)).uid, UID, 'the pid the node holds is the jailed VMM (the jailer execs)');
    checkThaw(s, r);
    await s.driver.destroy(r.thawed);
    assert.ok(!existsSync(r.spec2.dir), 'destroy removes the VM folder and the jail in it');
  });

  test('N1: a TAP missing from the namespace, or owned by another VM, is refused', async () => {
    for (const [tap, re] of [['tap7', /no such TAP/], ['tap9', /belongs to uid/]] as const) {
      const s = setup({}, tap);
      const spec = s.spec('bad');
      await assert.rejects(s.driver.boot(spec), (e: unknown) => isThawError(e, 'VM_START_FAILED') && re.test(e.message));
      rmSync(spec.dir, { recursive: true, force: true });
    }
  });
});

/** The thaw: same TAP, volume drive re-pointed to the new file before the resume, seed memory read-only to the VMM. */
function checkThaw(s: ReturnType<typeof setup>, r: Awaited<ReturnType<typeof bakeAndThaw>>): void {
  const calls = s.calls();
  const load = calls.findIndex((c) => c.url === '/snapshot/load');
  assert.deepEqual((calls[load]!.body as { network_overrides?: unknown }).network_overrides, [{ iface_id: 'eth0', host_dev_name: 'tap0' }]);
  const patch = calls.findIndex((c) => c.method === 'PATCH' && c.url === '/drives/volume');
  assert.ok(patch > load, 'the volume drive is re-pointed after the load');
  const resume = calls.findIndex((c, i) => i > load && c.url === '/vm' && (c.body as { state?: string }).state === 'Resumed');
  assert.ok(resume === -1 || resume > patch, 'and before the resume');
  const patched = s.records().filter((x) => x.drive === 'volume' && x.how === 'patch').at(-1);
  assert.equal(patched?.ino, statSync(r.vol2).ino, "the drive is the app's current volume file");
  assert.equal(patched?.writable, true, 'which the VM uid may write');
  assert.equal(statSync(r.vol2).uid, UID);
  const mem = s.records().filter((x) => x.mem).at(-1);
  assert.equal(mem?.ino, statSync(r.snap.mem).ino, 'the seed memory image itself is mapped (a hard link, no copy)');
  assert.equal(mem?.writable, false, 'the seed memory image is read-only to the VMM');
  assert.deepEqual(s.records().filter((x) => x.fault), []);
}
