// Tests of the Firecracker driver against the fake Firecracker in
// firecracker-fake/ (no real one can run here): it validates every request
// against Firecracker's OpenAPI spec, keeps its state machine, opens every file
// it is given (relative to its working folder) and serves vsock only from a
// running guest that listens. Any refused request fails the driver call.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { freePort } from '../lifecycle/context.ts';
import { isThawError } from '../errors.ts';
import { FirecrackerDriver, type FirecrackerOptions } from './firecracker.ts';
import { fakeFirecracker } from './firecracker-fake/spawn.ts';
import type { VmHandle, VmSpec } from './types.ts';

const root = mkdtempSync(join(tmpdir(), 'thaw-fc-test-'));
after(() => rmSync(root, { recursive: true, force: true }));
const KERNEL = join(root, 'vmlinux');
const INITRD = join(root, 'initrd');
/** Stands for the binary (the driver checks that it exists; the fake spawner runs the fake instead). */
const FC_BIN = join(root, 'firecracker');
writeFileSync(KERNEL, 'kernel');
writeFileSync(INITRD, 'initrd');
writeFileSync(FC_BIN, '#!/bin/false\n', { mode: 0o755 });

type Rec = { method?: string; url?: string; body?: Record<string, unknown>; vsock?: string; running?: boolean; vsock_refused?: number; why?: string; fault?: string; argv?: string[]; cwd?: string };

let n = 0;
function setup(env: Record<string, string> = {}, opts: FirecrackerOptions = {}) {
  const id = `vm-${++n}`;
  const logFile = join(root, `${id}.jsonl`);
  writeFileSync(logFile, '');
  const fake = fakeFirecracker({ FAKE_LOG: logFile, FAKE_BOOT_MS: '100', ...env });
  const driver = new FirecrackerDriver({ binary: FC_BIN, startTimeoutMs: 20_000, agentConnectTimeoutMs: 10_000, ...opts, spawn: fake.spawn });
  const spec = vmDir(id);
  const records = (): Rec[] => readFileSync(logFile, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Rec);
  const calls = (): Rec[] => records().filter((r) => r.method && !(r.method === 'GET' && r.url === '/'));
  return { driver, spec, fake, records, calls };
}

/** A VM folder holding its raw disk, as createOverlay leaves it. */
function vmDir(id: string): VmSpec {
  const dir = join(root, id);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'disk.raw'), Buffer.alloc(8192));
  return { id, dir, kernel: KERNEL, initrd: INITRD, cmdline: 'console=ttyS0', memMiB: 256, vcpus: 2, disk: join(dir, 'disk.raw'), diskFormat: 'raw', memFile: join(dir, 'mem.ram'), guestPort: 8080, hostPort: 41000 };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function rejectsWith(p: Promise<unknown>, code: string, match?: RegExp) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isThawError(err), `not a ThawError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (match) assert.match(err.message, match);
    return true;
  });
}

/** The agent's first line on a fresh channel is its hello. */
async function hello(ch: NodeJS.ReadWriteStream): Promise<{ agent_pid: number; pubkey: string }> {
  let got = '';
  while (!got.includes('\n')) got += String((await once(ch, 'data'))[0]);
  return (JSON.parse(got.slice(0, got.indexOf('\n'))) as { hello: { agent_pid: number; pubkey: string } }).hello;
}

test('boot runs Firecracker in the VM folder and configures it with relative paths', async (t) => {
  const { driver, spec, fake, calls, records } = setup();
  const vm = await driver.boot(spec);
  t.after(() => driver.destroy(vm));
  assert.equal(fake.spawned.length, 1);
  assert.deepEqual(fake.spawned[0]!.argv.slice(-5), [FC_BIN, '--id', spec.id, '--api-sock', 'fc.sock'], 'its id names the VM (recover() finds it by it)');
  assert.equal(fake.spawned[0]!.cwd, spec.dir);
  assert.equal(records()[0]!.cwd, spec.dir);
  assert.equal(readFileSync(join(spec.dir, 'vmm.pid'), 'utf8').trim(), String(vm.pid));
  assert.deepEqual(calls().map((c) => [c.method, c.url, c.body]), [
    ['PUT', '/boot-source', { kernel_image_path: 'vmlinux', initrd_path: 'initrd', boot_args: 'console=ttyS0' }],
    ['PUT', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: 'disk.raw', is_root_device: false, is_read_only: false, cache_type: 'Writeback', io_engine: 'Sync' }],
    ['PUT', '/machine-config', { mem_size_mib: 256, vcpu_count: 2, smt: false, track_dirty_pages: false }],
    ['PUT', '/vsock', { guest_cid: 3, uds_path: 'vsock.sock' }],
    ['PUT', '/actions', { action_type: 'InstanceStart' }],
  ]);
  assert.deepEqual(records().filter((r) => r.fault), []);
  assert.ok(alive(vm.pid));
  assert.match(readFileSync(vm.consoleLog, 'utf8'), /hello on the serial console/);
});

test("the driver's TAP becomes eth0, with a relay from 127.0.0.1:hostPort", { skip: process.getuid?.() === 0 ? false : 'needs root for a TAP' }, async (t) => {
  const tap = `fct${process.pid % 100000}`;
  execFileSync('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap']);
  t.after(() => execFileSync('ip', ['link', 'del', tap]));
  const { driver, spec, calls } = setup({}, { tap });
  const vm = await driver.boot({ ...spec, hostPort: await freePort() });
  t.after(() => driver.destroy(vm));
  assert.deepEqual(calls().find((c) => c.url === '/network-interfaces/eth0')?.body, { iface_id: 'eth0', host_dev_name: tap, guest_mac: '06:00:ac:10:00:02' });
  assert.equal(calls()[0]!.body!.boot_args, 'console=ttyS0', 'the guest sets its own address (10.0.2.15/24)');
  assert.deepEqual(vm.appAddress, { host: '127.0.0.1', port: vm.spec.hostPort });
  const c = net.connect(vm.appAddress.port, vm.appAddress.host);
  await once(c, 'connect'); // the relay listens (the guest IP itself is not reachable here)
  c.destroy();
});

test('flaw 2: right after InstanceStart nothing listens; the handshake is retried until the agent is up', async (t) => {
  const { driver, spec, records } = setup({ FAKE_BOOT_MS: '1500' });
  const vm = await driver.boot(spec);
  t.after(() => driver.destroy(vm));
  const ch = await driver.openAgentChannel(vm);
  t.after(() => ch.destroy());
  assert.ok((await hello(ch)).agent_pid > 0);
  assert.ok(records().some((r) => r.why === 'no guest listener'), 'the fake closed at least one early CONNECT');
});

test('an agent that never listens is AGENT_TIMEOUT at the deadline', async (t) => {
  const { driver, spec } = setup({ FAKE_BOOT_MS: '60000' }, { agentConnectTimeoutMs: 600 });
  const vm = await driver.boot(spec);
  t.after(() => driver.destroy(vm));
  await rejectsWith(driver.openAgentChannel(vm), 'AGENT_TIMEOUT', /attempts/);
});

/** Boot, pause, snapshot into `seed`, copy the disk there, destroy: a bake. */
async function bakeTo(driver: FirecrackerDriver, spec: VmSpec, seed: string) {
  const vm = await driver.boot(spec);
  const ch = await driver.openAgentChannel(vm);
  const h = await hello(ch);
  ch.destroy();
  mkdirSync(seed, { recursive: true });
  const snap = { state: join(seed, 'state.bin'), mem: join(seed, 'mem.ram') };
  await driver.pause(vm);
  await driver.snapshot(vm, snap);
  await copyFile(spec.disk, join(seed, 'disk.img'));
  await driver.destroy(vm);
  assert.ok(!existsSync(spec.dir), 'destroy removed the baked VM folder');
  return { snap, hello: h };
}

test('flaw 4 and flaw 1: a restore finds its disk in its own folder; the channel opens only after resume', async (t) => {
  const { driver, spec, calls, records } = setup();
  const { snap, hello: baked } = await bakeTo(driver, spec, join(root, 'seed-a'));
  const s2 = vmDir(`${spec.id}-thaw`);
  await copyFile(join(root, 'seed-a', 'disk.img'), s2.disk);
  const vm = await driver.restore({ ...s2, memFile: snap.mem }, snap);
  t.after(() => driver.destroy(vm));
  assert.deepEqual(calls().at(-1), { method: 'PUT', url: '/snapshot/load', type: 'application/json', body: {
    snapshot_path: 'seed-state.bin', mem_backend: { backend_type: 'File', backend_path: 'seed-mem.ram' }, resume_vm: false, vsock_override: { uds_path: 'vsock.sock' },
  } });
  // Paused after the load: no CONNECT succeeds before resume (today's thaw order timed out here).
  const impatient = new FirecrackerDriver({ binary: FC_BIN, agentConnectTimeoutMs: 400 });
  await rejectsWith(impatient.openAgentChannel(vm), 'AGENT_TIMEOUT');
  // One pending at resume is dropped by the transport reset; the retry gets through.
  const held = records().filter((r) => r.vsock && r.running === false).length;
  const openP = driver.openAgentChannel(vm);
  while (records().filter((r) => r.vsock && r.running === false).length === held) await new Promise((r) => setTimeout(r, 20));
  await driver.resume(vm);
  const ch = await openP;
  t.after(() => ch.destroy());
  assert.ok(records().some((r) => r.why === 'connected before the transport reset'), 'the pre-resume CONNECT was dropped');
  const h = await hello(ch);
  assert.deepEqual([h.agent_pid, h.pubkey], [baked.agent_pid, baked.pubkey], 'the frozen agent answers');
  await rejectsWith(driver.snapshot(vm, snap), 'INTERNAL', /mapped from/);
});

test('a snapshot whose disk is gone fails the load, and Firecracker ends', async () => {
  const { driver, spec } = setup();
  const { snap } = await bakeTo(driver, spec, join(root, 'seed-b'));
  const s2 = vmDir(`${spec.id}-nodisk`);
  rmSync(s2.disk);
  await rejectsWith(driver.restore({ ...s2, memFile: snap.mem }, snap), 'VM_START_FAILED', /Load snapshot error/);
  rmSync(s2.dir, { recursive: true, force: true });
});

test('an API fault during boot is VM_START_FAILED with the fault message; the process is killed', async () => {
  const { driver, spec, fake } = setup({ FAKE_FAULT: 'PUT /machine-config' });
  await assert.rejects(driver.boot(spec), (err: unknown) => {
    assert.ok(isThawError(err, 'VM_START_FAILED'), String(err));
    assert.equal(err.details?.fault_message, 'fake fault on PUT /machine-config');
    return true;
  });
  assert.ok(!alive(fake.children[0]!.pid!));
  assert.ok(existsSync(join(spec.dir, 'console.log')), 'the console log named in the error survives');
});

test('a snapshot into a missing folder is refused by Firecracker and is INTERNAL', async (t) => {
  const { driver, spec } = setup();
  const vm = await driver.boot(spec);
  t.after(() => driver.destroy(vm));
  await driver.pause(vm);
  await rejectsWith(driver.snapshot(vm, { state: join(root, 'nodir', 's'), mem: join(root, 'nodir', 'm') }), 'INTERNAL', /Cannot create snapshot/);
});

test('a process that exits before the API answers is VM_START_FAILED; a silent one is VM_TIMEOUT', { timeout: 30_000 }, async () => {
  const a = setup({ FAKE_MODE: 'exit' }, { startTimeoutMs: 60_000 });
  await assert.rejects(a.driver.boot(a.spec), (err: unknown) => isThawError(err, 'VM_START_FAILED') && err.details?.code === 3);
  const b = setup({ FAKE_MODE: 'hang' }, { startTimeoutMs: 1500 });
  await rejectsWith(b.driver.boot(b.spec), 'VM_TIMEOUT');
  assert.ok(!alive(b.fake.children[0]!.pid!));
});

test('qcow2, a disk outside the VM folder, >32 vCPUs and a missing binary are refused', async () => {
  const { driver, spec, fake } = setup();
  await rejectsWith(driver.boot({ ...spec, diskFormat: 'qcow2' }), 'HYPERVISOR_UNSUPPORTED', /raw/);
  await rejectsWith(driver.boot({ ...spec, disk: join(root, 'elsewhere.raw') }), 'INTERNAL', /disk\.raw/);
  await rejectsWith(driver.boot({ ...spec, vcpus: 33 }), 'HYPERVISOR_UNSUPPORTED');
  assert.equal(fake.spawned.length, 0);
  await rejectsWith(new FirecrackerDriver({ binary: join(root, 'no-such-firecracker') }).boot(spec), 'HOST_MISSING_TOOL');
});

test('destroy leaves no process and no folder, and is idempotent', async () => {
  const { driver, spec } = setup();
  const vm: VmHandle = await driver.boot(spec);
  await driver.destroy(vm);
  assert.ok(!alive(vm.pid));
  assert.ok(!existsSync(spec.dir));
  await driver.destroy(vm);
  await rejectsWith(driver.pause(vm), 'VM_GONE');
});

test('accel is kvm only when the KVM device opens read-write', async () => {
  const dev = join(root, 'fake-kvm');
  writeFileSync(dev, '');
  assert.equal(await new FirecrackerDriver({ kvmDevice: dev }).accel(), 'kvm');
  await rejectsWith(new FirecrackerDriver({ kvmDevice: join(root, 'no-kvm') }).accel(), 'HYPERVISOR_UNSUPPORTED', /KVM/);
});
