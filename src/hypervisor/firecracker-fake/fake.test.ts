// The fake Firecracker holds its callers to Firecracker's documented rules
// (each rule's source is cited where the fake enforces it: spec.ts, machine.ts,
// vsock.ts). These tests drive it directly over its API socket.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Client } from 'undici';
import { fakeFirecracker } from './spawn.ts';

const root = mkdtempSync(join(tmpdir(), 'thaw-fcfake-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

async function start(env: Record<string, string> = {}) {
  const dir = join(root, `vm${++n}`);
  mkdirSync(dir);
  for (const f of ['vmlinux', 'initrd']) writeFileSync(join(dir, f), f);
  writeFileSync(join(dir, 'disk.raw'), Buffer.alloc(4096));
  const log = join(dir, 'fake.jsonl');
  const fake = fakeFirecracker({ FAKE_BOOT_MS: '300', FAKE_LOG: log, ...env });
  const child = fake.spawn('firecracker', ['--api-sock', 'fc.sock'], { cwd: dir, stdio: 'ignore' });
  const exited = once(child, 'exit');
  while (!existsSync(join(dir, 'fc.sock'))) await new Promise((r) => setTimeout(r, 50));
  const client = new Client('http://localhost', { socketPath: join(dir, 'fc.sock') });
  const call = async (method: 'PUT' | 'PATCH' | 'GET', path: string, body?: unknown) => {
    const res = await client.request({ method, path, headers: { 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    const text = await res.body.text();
    return { status: res.statusCode, body: text ? (JSON.parse(text) as Record<string, unknown>) : null };
  };
  const fault = async (method: 'PUT' | 'PATCH', path: string, body: unknown, re: RegExp) => {
    const r = await call(method, path, body);
    assert.equal(r.status, 400, `${method} ${path} ${JSON.stringify(body)} was accepted`);
    assert.deepEqual(Object.keys(r.body ?? {}), ['fault_message'], 'the spec\'s Error shape');
    assert.match(String(r.body!.fault_message), re);
  };
  const stop = async () => {
    await client.close();
    child.kill('SIGKILL');
    await exited;
  };
  /** Wait until the fake logged a CONNECT that arrived while the VM was not running. */
  const heldConnect = async () => {
    while (!readFileSync(log, 'utf8').includes('"running":false')) await new Promise((r) => setTimeout(r, 20));
  };
  return { dir, call, fault, stop, exited, heldConnect };
}

const CONFIG = [
  ['PUT', '/boot-source', { kernel_image_path: 'vmlinux', initrd_path: 'initrd' }],
  ['PUT', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: 'disk.raw', is_root_device: false, is_read_only: false }],
  ['PUT', '/machine-config', { mem_size_mib: 128, vcpu_count: 1 }],
  ['PUT', '/vsock', { guest_cid: 3, uds_path: 'v.sock' }],
] as const;

test('the fake reads a verbatim copy of the shared Firecracker spec', (t) => {
  const shared = new URL('../../../../shared/specs/firecracker.yaml', import.meta.url);
  if (!existsSync(shared)) return t.skip('no ../shared/specs next to the repository');
  assert.ok(readFileSync(new URL('./firecracker.yaml', import.meta.url)).equals(readFileSync(shared)));
});

test('S1, S2: paths and bodies are checked against the spec, answered with {fault_message}', async (t) => {
  const f = await start();
  t.after(f.stop);
  await f.fault('PUT', '/no-such-thing', {}, /Invalid request method and\/or path/);
  await f.fault('PATCH', '/boot-source', { kernel_image_path: 'vmlinux' }, /Invalid request method/);
  await f.fault('PUT', '/machine-config', { mem_size_mib: 128, vcpu_count: 1, turbo: true }, /unknown field `turbo`/);
  await f.fault('PUT', '/machine-config', { mem_size_mib: 128 }, /missing field `vcpu_count`/);
  await f.fault('PUT', '/machine-config', { mem_size_mib: 128, vcpu_count: '1' }, /invalid type/);
  await f.fault('PUT', '/machine-config', { mem_size_mib: 128, vcpu_count: 33 }, /maximum 32/);
  await f.fault('PUT', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: 'disk.raw', is_root_device: false, is_read_only: false, cache_type: 'Fast' }, /unknown variant `Fast`/);
  await f.fault('PUT', '/snapshot/load', { snapshot_path: 's', mem_backend: { backend_type: 'File' } }, /missing field `backend_path`/);
  await f.fault('PUT', '/machine-config', 'not json{', /deserializing/);
});

test('M1-M6, F1, F3: the state machine and the files of a boot', async (t) => {
  const f = await start();
  t.after(f.stop);
  await f.fault('PATCH', '/vm', { state: 'Paused' }, /not supported before starting/); // M3
  await f.fault('PUT', '/snapshot/create', { snapshot_path: 's', mem_file_path: 'm' }, /not supported before starting/); // M3
  await f.fault('PUT', '/actions', { action_type: 'InstanceStart' }, /without kernel configuration/); // M5
  await f.fault('PUT', '/boot-source', { kernel_image_path: 'no-kernel' }, /Invalid kernel path/); // F1
  await f.fault('PUT', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: 'gone.raw', is_root_device: false, is_read_only: false }, /block device/); // F1
  await f.fault('PUT', '/drives/other', { drive_id: 'rootfs', path_on_host: 'disk.raw', is_root_device: false, is_read_only: false }, /does not match/); // M6
  for (const [m, p, b] of CONFIG) assert.equal((await f.call(m, p, b)).status, 204, p);
  await f.fault('PUT', '/snapshot/load', { snapshot_path: 's', mem_backend: { backend_type: 'File', backend_path: 'm' } }, /not allowed after configuring/); // M2
  assert.equal((await f.call('PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
  await f.fault('PUT', '/machine-config', { mem_size_mib: 256, vcpu_count: 1 }, /not supported after starting/); // M1
  await f.fault('PUT', '/actions', { action_type: 'InstanceStart' }, /not supported after starting/); // M1
  await f.fault('PUT', '/snapshot/create', { snapshot_path: 'state', mem_file_path: 'mem' }, /pause it first/); // M4
  assert.equal((await f.call('PATCH', '/vm', { state: 'Paused' })).status, 204);
  await f.fault('PUT', '/snapshot/create', { snapshot_path: 'no-dir/state', mem_file_path: 'mem' }, /Cannot create snapshot/); // F3
  assert.equal((await f.call('PUT', '/snapshot/create', { snapshot_path: 'state', mem_file_path: 'mem' })).status, 204);
  assert.ok(existsSync(join(f.dir, 'state')) && existsSync(join(f.dir, 'mem')));
  assert.equal((await f.call('GET', '/')).body!.state, 'Paused');
});

/** Send CONNECT; resolve with the first line, or null when the connection closes first. */
async function connect(sock: string, port: number): Promise<string | null> {
  const c = net.connect(sock);
  c.on('error', () => {});
  c.write(`CONNECT ${port}\n`);
  let got = '';
  c.on('data', (d) => (got += String(d)));
  await once(c, 'close').catch(() => {});
  return got ? got.split('\n')[0]! : null;
}

test('V1, V4: CONNECT is closed until the guest listens; a taken uds_path fails InstanceStart', async (t) => {
  const f = await start({ FAKE_BOOT_MS: '3000' });
  t.after(f.stop);
  for (const [m, p, b] of CONFIG) await f.call(m, p, b);
  await f.call('PUT', '/actions', { action_type: 'InstanceStart' });
  assert.equal(await connect(join(f.dir, 'v.sock'), 1024), null, 'nothing listens yet (V1)');
  await new Promise((r) => setTimeout(r, 3300));
  const c = net.connect(join(f.dir, 'v.sock'));
  c.write('CONNECT 1024\n');
  const [first] = await once(c, 'data');
  assert.match(String(first), /^OK \d+\n/);
  c.destroy();
  assert.equal(await connect(join(f.dir, 'v.sock'), 9), null, 'no listener on port 9 (V1)');
  const g = await start();
  t.after(g.stop);
  writeFileSync(join(g.dir, 'v.sock'), 'taken');
  for (const [m, p, b] of CONFIG) await g.call(m, p, b);
  await g.fault('PUT', '/actions', { action_type: 'InstanceStart' }, /binding/); // V4
});

test('F2, V3: a load reopens the recorded relative paths; before resume no CONNECT gets through; a failed load ends the process', async (t) => {
  const a = await start({ FAKE_BOOT_MS: '0' });
  for (const [m, p, b] of CONFIG) await a.call(m, p, b);
  await a.call('PUT', '/actions', { action_type: 'InstanceStart' });
  await a.call('PATCH', '/vm', { state: 'Paused' });
  const snap = { snapshot_path: join(root, 'snap.state'), mem_backend: { backend_type: 'File', backend_path: join(root, 'snap.mem') } };
  await a.call('PUT', '/snapshot/create', { snapshot_path: snap.snapshot_path, mem_file_path: snap.mem_backend.backend_path });
  await a.stop();

  const b = await start();
  t.after(b.stop);
  assert.equal((await b.call('PUT', '/snapshot/load', { ...snap, resume_vm: false })).status, 204, 'disk.raw and v.sock are found in the new folder');
  assert.equal((await b.call('GET', '/')).body!.state, 'Paused');
  assert.equal(await connect(join(b.dir, 'v.sock'), 1024), null, 'paused: held, then dropped (V3)');
  writeFileSync(join(b.dir, 'fake.jsonl'), '');
  const pending = connect(join(b.dir, 'v.sock'), 1024);
  await b.heldConnect();
  await b.call('PATCH', '/vm', { state: 'Resumed' });
  assert.equal(await pending, null, 'a CONNECT from before the resume is reset (V3)');
  const c = net.connect(join(b.dir, 'v.sock'));
  c.write('CONNECT 1024\n');
  assert.match(String((await once(c, 'data'))[0]), /^OK /);
  c.destroy();

  const d = await start();
  rmSync(join(d.dir, 'disk.raw'));
  await d.fault('PUT', '/snapshot/load', snap, /Load snapshot error: .*rootfs/); // F2
  const [code] = await d.exited;
  assert.equal(code, 1, 'Firecracker ends after a failed load');
});
