// Tests of the Firecracker driver against a FAKE Firecracker (no real one can run here):
// a node child process that serves HTTP on the --api-sock unix socket, records every
// request to a JSONL file, and serves the vsock host-initiated handshake.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { isThawError } from '../errors.ts';
import { FirecrackerDriver, tapName, type FirecrackerOptions } from './firecracker.ts';
import { vsockHandshake } from './firecracker-api.ts';
import type { VmHandle, VmSpec } from './types.ts';

const root = mkdtempSync(join(tmpdir(), 'thaw-fc-test-'));
after(() => rmSync(root, { recursive: true, force: true }));

const FAKE = join(root, 'fake-firecracker.mjs');
writeFileSync(FAKE, `
import http from 'node:http'; import net from 'node:net'; import fs from 'node:fs';
const sock = process.argv[process.argv.indexOf('--api-sock') + 1];
const { FAKE_LOG, FAKE_MODE = '', FAKE_FAULT = '' } = process.env;
const log = (o) => fs.appendFileSync(FAKE_LOG, JSON.stringify(o) + '\\n');
log({ argv: process.argv.slice(2) });
console.log('fake firecracker: hello on the serial console');
if (FAKE_MODE === 'exit') { console.error('fake firecracker: boom'); process.exit(3); }
if (FAKE_MODE === 'hang') setInterval(() => {}, 1000);
let state = 'Not started';
function vsock(path) {
  net.createServer((c) => {
    let buf = '';
    const onData = (d) => {
      buf += d; const nl = buf.indexOf('\\n'); if (nl < 0) return;
      c.off('data', onData); log({ vsock: buf.slice(0, nl) });
      c.write('OK 1073741824\\n{"hello":1}\\n'); c.pipe(c);
    };
    c.on('data', onData);
  }).listen(path);
}
const server = http.createServer((req, res) => {
  let body = '';
  req.on('data', (d) => (body += d));
  req.on('end', () => {
    const parsed = body ? JSON.parse(body) : undefined;
    log({ method: req.method, url: req.url, type: req.headers['content-type'], body: parsed });
    const key = req.method + ' ' + req.url;
    if (key === FAKE_FAULT) { res.writeHead(400, { 'content-type': 'application/json' }); return res.end(JSON.stringify({ fault_message: 'fake fault on ' + key })); }
    if (key === 'GET /') { res.writeHead(200, { 'content-type': 'application/json' }); return res.end(JSON.stringify({ app_name: 'Firecracker', id: 'anonymous-instance', state, vmm_version: '1.17.0-dev' })); }
    if (key === 'PUT /vsock') vsock(parsed.uds_path);
    if (key === 'PUT /snapshot/load') { vsock(parsed.vsock_override.uds_path); state = 'Paused'; }
    if (key === 'PUT /snapshot/create') { fs.writeFileSync(parsed.snapshot_path, 'state'); fs.writeFileSync(parsed.mem_file_path, 'mem'); }
    if (key === 'PUT /actions') state = 'Running';
    if (key === 'PATCH /vm') state = parsed.state === 'Paused' ? 'Paused' : 'Running';
    res.writeHead(204); res.end();
  });
});
if (FAKE_MODE !== 'hang') setTimeout(() => server.listen(sock), FAKE_MODE === 'slow' ? 150 : 0);
`);

type Rec = { method?: string; url?: string; type?: string; body?: Record<string, unknown>; vsock?: string; argv?: string[] };

let n = 0;
function setup(env: Record<string, string> = {}, opts: FirecrackerOptions = {}) {
  const id = `vm-${++n}`;
  const logFile = join(root, `${id}.jsonl`);
  writeFileSync(logFile, '');
  const spawned: string[][] = [];
  const children: ChildProcess[] = [];
  const driver = new FirecrackerDriver({
    startTimeoutMs: 20_000,
    ...opts,
    spawn: (cmd: string, args: readonly string[], o: SpawnOptions) => {
      spawned.push([cmd, ...args]);
      const child = spawn(process.execPath, [FAKE, ...args], { ...o, env: { ...process.env, FAKE_LOG: logFile, ...env } });
      children.push(child);
      return child;
    },
  });
  const spec: VmSpec = {
    id, dir: join(root, id), kernel: '/k/vmlinux', initrd: '/k/initrd', cmdline: 'console=ttyS0', memMiB: 256, vcpus: 2,
    disk: join(root, `${id}.raw`), diskFormat: 'raw', memFile: join(root, `${id}.mem`), guestPort: 8080, hostPort: 41000,
  };
  const records = (): Rec[] => readFileSync(logFile, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Rec);
  const calls = (): Rec[] => records().filter((r) => r.method && !(r.method === 'GET' && r.url === '/'));
  return { driver, spec, spawned, children, records, calls };
}

/** Required fields and allowed properties of each definition, copied by hand from firecracker.yaml. */
const SPEC: Record<string, { required: string[]; props: string[] }> = {
  'PUT /boot-source': { required: ['kernel_image_path'], props: ['boot_args', 'initrd_path', 'kernel_image_path'] },
  'PUT /drives': { required: ['drive_id', 'is_root_device'], props: ['drive_id', 'partuuid', 'is_root_device', 'cache_type', 'is_read_only', 'path_on_host', 'rate_limiter', 'io_engine', 'socket'] },
  'PATCH /drives': { required: ['drive_id'], props: ['drive_id', 'path_on_host', 'rate_limiter'] },
  'PUT /machine-config': { required: ['mem_size_mib', 'vcpu_count'], props: ['cpu_template', 'smt', 'mem_size_mib', 'track_dirty_pages', 'vcpu_count', 'huge_pages'] },
  'PUT /network-interfaces': { required: ['host_dev_name', 'iface_id'], props: ['guest_mac', 'host_dev_name', 'iface_id', 'mtu', 'rx_rate_limiter', 'tx_rate_limiter'] },
  'PUT /vsock': { required: ['guest_cid', 'uds_path'], props: ['guest_cid', 'uds_path', 'vsock_id'] },
  'PUT /actions': { required: ['action_type'], props: ['action_type'] },
  'PATCH /vm': { required: ['state'], props: ['state'] },
  'PUT /snapshot/create': { required: ['mem_file_path', 'snapshot_path'], props: ['mem_file_path', 'snapshot_path', 'snapshot_type'] },
  'PUT /snapshot/load': { required: ['snapshot_path'], props: ['enable_diff_snapshots', 'track_dirty_pages', 'mem_file_path', 'mem_backend', 'snapshot_path', 'resume_vm', 'network_overrides', 'vsock_override', 'clock_realtime', 'huge_pages'] },
};

function assertConforms(r: Rec): void {
  const [, base, param] = /^(\/[a-z-]+(?:\/(?:create|load))?)(?:\/([^/]+))?$/.exec(r.url!) ?? [];
  const def = SPEC[`${r.method} ${base}`];
  assert.ok(def, `unexpected call ${r.method} ${r.url}`);
  assert.equal(r.type, 'application/json');
  const body = r.body!;
  for (const k of def.required) assert.ok(k in body, `${r.method} ${r.url}: missing required ${k}`);
  for (const k of Object.keys(body)) assert.ok(def.props.includes(k), `${r.method} ${r.url}: unknown property ${k}`);
  if (base === '/drives') assert.equal(body.drive_id, param, 'drive_id must match the path');
  if (base === '/network-interfaces') assert.equal(body.iface_id, param, 'iface_id must match the path');
  if (base === '/vsock') assert.ok((body.guest_cid as number) >= 3);
  if (base === '/machine-config') assert.ok((body.vcpu_count as number) >= 1 && (body.vcpu_count as number) <= 32);
  if (base === '/snapshot/load') {
    assert.ok(('mem_backend' in body) !== ('mem_file_path' in body), 'exactly one of mem_backend / mem_file_path');
    const mb = body.mem_backend as Record<string, unknown>;
    assert.ok(['File', 'Uffd'].includes(mb.backend_type as string) && typeof mb.backend_path === 'string');
  }
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

test('boot sends the configuration calls in order, then InstanceStart', async (t) => {
  const { driver, spec, spawned, records, calls } = setup();
  const vm = await driver.boot(spec);
  t.after(() => driver.destroy(vm));
  assert.deepEqual(spawned, [['firecracker', '--api-sock', join(spec.dir, 'fc.sock')]]);
  assert.equal(records()[0]!.method, undefined); // argv line first
  assert.deepEqual(records().find((r) => r.method)?.url, '/'); // readiness probe before any PUT
  const tap = tapName(spec.id);
  assert.match(tap, /^fc[0-9a-f]{13}$/);
  assert.deepEqual(calls().map((c) => [c.method, c.url, c.body]), [
    ['PUT', '/boot-source', { kernel_image_path: '/k/vmlinux', initrd_path: '/k/initrd', boot_args: 'console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off' }],
    ['PUT', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: spec.disk, is_root_device: false, is_read_only: false, cache_type: 'Writeback', io_engine: 'Sync' }],
    ['PUT', '/machine-config', { mem_size_mib: 256, vcpu_count: 2, smt: false, track_dirty_pages: false }],
    ['PUT', '/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: tap, guest_mac: '06:00:ac:10:00:02' }],
    ['PUT', '/vsock', { guest_cid: 3, uds_path: join(spec.dir, 'vsock.sock') }],
    ['PUT', '/actions', { action_type: 'InstanceStart' }],
  ]);
  calls().forEach(assertConforms);
  assert.equal(vm.id, spec.id);
  assert.ok(alive(vm.pid));
  assert.deepEqual(vm.appAddress, { host: '172.16.0.2', port: 8080 });
  assert.equal(vm.consoleLog, join(spec.dir, 'console.log'));
  assert.match(readFileSync(vm.consoleLog, 'utf8'), /hello on the serial console/);
});

test('boot retries until a slow API socket answers', async (t) => {
  const { driver, spec, calls } = setup({ FAKE_MODE: 'slow' });
  const vm = await driver.boot(spec);
  t.after(() => driver.destroy(vm));
  assert.equal(calls().at(-1)?.url, '/actions');
});

test('pause, snapshot, resume', async (t) => {
  const { driver, spec, calls } = setup();
  const vm = await driver.boot(spec);
  t.after(() => driver.destroy(vm));
  const before = calls().length;
  const snap = { state: join(root, `${spec.id}.state`), mem: join(root, `${spec.id}.snapmem`) };
  await driver.pause(vm);
  await driver.snapshot(vm, snap);
  await driver.resume(vm);
  const tail = calls().slice(before);
  assert.deepEqual(tail.map((c) => [c.method, c.url, c.body]), [
    ['PATCH', '/vm', { state: 'Paused' }],
    ['PUT', '/snapshot/create', { snapshot_type: 'Full', snapshot_path: snap.state, mem_file_path: snap.mem }],
    ['PATCH', '/vm', { state: 'Resumed' }],
  ]);
  tail.forEach(assertConforms);
  assert.equal(readFileSync(snap.mem, 'utf8'), 'mem');
});

test('restore loads the snapshot paused, re-points the drive, and resumes on request', async (t) => {
  const { driver, spec, calls, records } = setup();
  const snap = { state: join(root, 'seed.state'), mem: join(root, 'seed.mem') };
  const s = { ...spec, memFile: snap.mem };
  const vm = await driver.restore(s, snap);
  t.after(() => driver.destroy(vm));
  assert.deepEqual(calls().map((c) => [c.method, c.url, c.body]), [
    ['PUT', '/snapshot/load', {
      snapshot_path: snap.state,
      mem_backend: { backend_type: 'File', backend_path: snap.mem },
      resume_vm: false,
      network_overrides: [{ iface_id: 'eth0', host_dev_name: tapName(spec.id) }],
      vsock_override: { uds_path: join(spec.dir, 'vsock.sock') },
    }],
    ['PATCH', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: spec.disk }],
  ]);
  await driver.resume(vm);
  assert.deepEqual(calls().at(-1)?.body, { state: 'Resumed' });
  calls().forEach(assertConforms);
  assert.ok(!records().some((r) => r.url === '/actions'), 'a restore never sends InstanceStart');
  // A restored VM maps snap.mem privately: snapshotting into that same file is refused.
  await rejectsWith(driver.snapshot(vm, snap), 'INTERNAL', /mapped from/);
  await rejectsWith(driver.restore({ ...spec, id: 'other', dir: join(root, 'other') }, snap), 'INTERNAL', /memFile/);
});

test('an API fault during boot is VM_START_FAILED with the fault message; the process is killed', async () => {
  const { driver, spec, children } = setup({ FAKE_FAULT: 'PUT /machine-config' });
  await assert.rejects(driver.boot(spec), (err: unknown) => {
    assert.ok(isThawError(err, 'VM_START_FAILED'), String(err));
    assert.match(err.message, /fake fault on PUT \/machine-config/);
    assert.equal(err.details?.status, 400);
    assert.equal(err.details?.fault_message, 'fake fault on PUT /machine-config');
    return true;
  });
  assert.equal(children.length, 1);
  assert.ok(!alive(children[0]!.pid!), 'the failed VM process is gone');
  assert.ok(existsSync(join(spec.dir, 'console.log')), 'the console log named in the error survives');
  rmSync(spec.dir, { recursive: true, force: true });
});

test('an API fault on a running VM is INTERNAL', async (t) => {
  const { driver, spec } = setup({ FAKE_FAULT: 'PATCH /vm' });
  const vm = await driver.boot(spec);
  t.after(() => driver.destroy(vm));
  await rejectsWith(driver.pause(vm), 'INTERNAL', /fake fault on PATCH \/vm/);
});

test('a process that exits before the API answers is VM_START_FAILED, not a timeout', { timeout: 10_000 }, async () => {
  const { driver, spec } = setup({ FAKE_MODE: 'exit' }, { startTimeoutMs: 60_000 });
  await assert.rejects(driver.boot(spec), (err: unknown) => {
    assert.ok(isThawError(err, 'VM_START_FAILED'), String(err));
    assert.equal(err.details?.code, 3);
    assert.equal(err.details?.consoleLog, join(spec.dir, 'console.log'));
    return true;
  });
  assert.match(readFileSync(join(spec.dir, 'console.log'), 'utf8'), /boom/);
  rmSync(spec.dir, { recursive: true, force: true });
});

test('an API that never answers is VM_TIMEOUT and the process is killed', async () => {
  const { driver, spec, children } = setup({ FAKE_MODE: 'hang' }, { startTimeoutMs: 300 });
  await rejectsWith(driver.boot(spec), 'VM_TIMEOUT');
  assert.equal(children.length, 1);
  assert.ok(!alive(children[0]!.pid!));
  rmSync(spec.dir, { recursive: true, force: true });
});

test('qcow2 disks and >32 vCPUs are HYPERVISOR_UNSUPPORTED without spawning', async () => {
  const { driver, spec, spawned } = setup();
  await rejectsWith(driver.boot({ ...spec, diskFormat: 'qcow2' }), 'HYPERVISOR_UNSUPPORTED', /raw/);
  await rejectsWith(driver.restore({ ...spec, diskFormat: 'qcow2' }, { state: 's', mem: spec.memFile }), 'HYPERVISOR_UNSUPPORTED');
  await rejectsWith(driver.boot({ ...spec, vcpus: 33 }), 'HYPERVISOR_UNSUPPORTED');
  assert.equal(spawned.length, 0);
});

test('a missing binary is HOST_MISSING_TOOL', async () => {
  const { spec } = setup();
  const driver = new FirecrackerDriver({ binary: join(root, 'no-such-firecracker') });
  await rejectsWith(driver.boot(spec), 'HOST_MISSING_TOOL');
  rmSync(spec.dir, { recursive: true, force: true });
});

test('openAgentChannel does the vsock CONNECT handshake and hands over the stream', async (t) => {
  const { driver, spec, records } = setup();
  const vm = await driver.boot(spec);
  t.after(() => driver.destroy(vm));
  const ch = await driver.openAgentChannel(vm);
  t.after(() => ch.destroy());
  assert.ok(records().some((r) => r.vsock === 'CONNECT 1024'));
  let got = '';
  ch.on('data', (d: Buffer) => (got += d.toString()));
  ch.write('ping\n');
  while (!got.includes('ping\n')) await once(ch, 'data');
  // Bytes that arrived with the OK line are not lost.
  assert.equal(got, '{"hello":1}\nping\n');
});

test('vsock handshake rejects a wrong answer and a closed connection', async (t) => {
  const sockPath = join(root, 'bad-vsock.sock');
  const server = net.createServer((c) => c.once('data', () => c.end('NOPE\n')));
  server.listen(sockPath);
  await once(server, 'listening');
  t.after(() => server.close());
  await rejectsWith(vsockHandshake(net.createConnection(sockPath), 1024, 2000), 'AGENT_PROTOCOL', /NOPE/);
  const closer = net.createServer((c) => c.once('data', () => c.destroy())); // like Firecracker when the guest port is closed
  closer.listen(sockPath + 'x');
  await once(closer, 'listening');
  t.after(() => closer.close());
  await rejectsWith(vsockHandshake(net.createConnection(sockPath + 'x'), 1024, 2000), 'AGENT_TIMEOUT', /closed/);
});

test('destroy leaves no process and no folder, and is idempotent', async () => {
  const { driver, spec } = setup();
  const vm: VmHandle = await driver.boot(spec);
  assert.ok(existsSync(spec.dir) && alive(vm.pid));
  await driver.destroy(vm);
  assert.ok(!alive(vm.pid));
  assert.ok(!existsSync(spec.dir));
  assert.notEqual((await vm.exited).signal, null);
  await driver.destroy(vm);
  await rejectsWith(driver.pause(vm), 'VM_GONE');
});

test('accel is kvm only when the KVM device opens read-write', async () => {
  const dev = join(root, 'fake-kvm');
  writeFileSync(dev, '');
  assert.equal(await new FirecrackerDriver({ kvmDevice: dev }).accel(), 'kvm');
  await rejectsWith(new FirecrackerDriver({ kvmDevice: join(root, 'no-kvm') }).accel(), 'HYPERVISOR_UNSUPPORTED', /KVM/);
});
