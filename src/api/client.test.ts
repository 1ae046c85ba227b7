import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { ThawError } from '../errors.ts';
import { ApiClient } from './client.ts';
import { FakeService, TEST_TOKEN, appView, startServer } from './testing.ts';

async function setup(t: TestContext, token = TEST_TOKEN, opts: { maxTarballBytes?: number } = {}) {
  const service = new FakeService();
  const { app, url } = await startServer(service, opts);
  const client = new ApiClient({ url, token });
  t.after(async () => {
    await client.close();
    await app.close();
  });
  return { service, client, url };
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<ThawError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ThawError, `not a ThawError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}`);
}

test('client round-trips every route', async (t) => {
  const { client, service } = await setup(t);
  assert.deepEqual(await client.health(), { ok: true });
  assert.equal(await client.metrics(), 'thaw_up 1\n');
  const a = await client.createApp('web', { idleTimeoutS: 30 });
  assert.equal(a.idle_timeout_s, 30);
  assert.deepEqual((await client.listApps()).map((x) => x.name), ['web']);
  assert.equal((await client.getApp('web')).state, 'created');
  await client.setEnv('web', { A: 'a=b' });
  assert.deepEqual(await client.listEnv('web'), [{ key: 'A', updated_at: '2024-01-01T00:00:00.000Z' }]);
  await client.unsetEnv('web', ['A']);
  assert.deepEqual(await client.listEnv('web'), []);
  const s = await client.sleep('web');
  assert.equal(s.baked, true);
  assert.equal(s.seed?.manifest_sha256.length, 64);
  assert.equal((await client.wake('web')).boot_mode, 'snapshot');
  assert.equal((await client.wakes('web', 5)).length, 1);
  assert.deepEqual(service.calls.at(-1), { method: 'wakes', args: ['web', 5] });
  assert.equal((await client.seeds())[0]?.app, 'a');
  let text = '';
  for await (const c of await client.logs('web')) text += c;
  assert.equal(text, 'line 1\nline 2\n');
  await client.deleteApp('web');
  assert.equal(service.apps.size, 0);
});

test('client deploy uploads the bytes, env and progress', async (t) => {
  const { client, service } = await setup(t);
  const tarball = randomBytes(100 * 1024);
  const r = await client.deploy('web', tarball, { env: { K: 'v=1' }, idleTimeoutS: 9 });
  assert.equal(r.deploy.image_bytes, tarball.length);
  assert.ok(service.received?.equals(tarball));
  assert.deepEqual(service.calls.at(-1)?.args, ['web', { env: { K: 'v=1' }, idleTimeoutS: 9 }]);

  service.progressLines = ['one', 'two'];
  const seen: string[] = [];
  const r2 = await client.deploy('web', tarball, { onProgress: (l) => seen.push(l) });
  assert.deepEqual(seen, ['one', 'two']);
  assert.equal(r2.app, 'web');

  service.deployError = new ThawError('APP_NO_PACKAGE_JSON', 'no package.json');
  await rejectsWith(client.deploy('web', tarball, { onProgress: () => {} }), 'APP_NO_PACKAGE_JSON');
  await rejectsWith(client.deploy('web', tarball), 'APP_NO_PACKAGE_JSON');
});

test('client reconstructs ThawError codes from error bodies', async (t) => {
  const { client, service } = await setup(t);
  service.apps.set('app', appView('app'));
  const e = await rejectsWith(client.getApp('ghost'), 'APP_NOT_FOUND');
  assert.equal(e.kind, 'user');
  assert.deepEqual(e.details, { name: 'ghost' });
  await rejectsWith(client.setEnv('app', { 'no-dash': 'x' }), 'INVALID_ENV_KEY');
  await rejectsWith(client.createApp('UPPER'), 'INVALID_APP_NAME');
  const bad = new ApiClient({ url: client.url, token: 'wrong-token-0123456789' });
  t.after(() => bad.close());
  await rejectsWith(bad.listApps(), 'UNAUTHORIZED');
});

test('client: a refused connection is NOT_RUNNING', async (t) => {
  // Find a port nothing listens on: bind one, close it, connect to it.
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  const client = new ApiClient({ url: `http://127.0.0.1:${port}`, token: TEST_TOKEN });
  t.after(() => client.close());
  const e = await rejectsWith(client.listApps(), 'NOT_RUNNING');
  assert.match(e.hint, /thaw up/);
});

test('client: an oversized upload surfaces as TARBALL_TOO_LARGE', async (t) => {
  const { client, service } = await setup(t, TEST_TOKEN, { maxTarballBytes: 64 * 1024 });
  await rejectsWith(client.deploy('web', randomBytes(8 * 1024 * 1024)), 'TARBALL_TOO_LARGE');
  await rejectsWith(client.deploy('web', randomBytes(8 * 1024 * 1024), { onProgress: () => {} }), 'TARBALL_TOO_LARGE');
  assert.equal(service.received, null);
});
