// `thaw up --tls`: the CLI on the same host finds an https:// API through
// instance.json and pins the fingerprint recorded there; a wrong one is
// refused with TLS_FINGERPRINT_MISMATCH. Wildcard binds become loopback URLs.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { createApiServer } from '../api/server.ts';
import { FakeService, TEST_TOKEN, appView } from '../api/testing.ts';
import { controlTls, localUrl } from '../control/join.ts';
import { writeInstance } from './instance.ts';
import { run } from './main.ts';

test('an https:// API from instance.json: the recorded fingerprint is pinned; a wrong one is refused', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-cli-tls-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const tls = (await controlTls({ tls: true }, dir, '127.0.0.1'))!;
  assert.match(tls.fingerprint, /^sha256:[0-9A-F:]{95}$/);
  assert.equal(tls.caFile, path.join(dir, 'tls', 'ca.crt'));
  const service = new FakeService();
  service.apps.set('web', appView('web'));
  const app = await createApiServer({ service, token: TEST_TOKEN, logger: false, tls: tls.server });
  t.after(() => app.close());
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = localUrl('https', '0.0.0.0', (app.server.address() as AddressInfo).port);
  assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);

  const cli = async (fingerprint: string) => {
    await writeInstance(dir, { api_url: url, router_url: 'http://localhost:8080', pid: process.pid, api_fingerprint: fingerprint }, TEST_TOKEN);
    let stdout = '';
    let stderr = '';
    const code = await run(['node', 'thaw', '--json', '--data', dir, 'apps'], { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
    return { code, stdout, stderr };
  };
  const ok = await cli(tls.fingerprint);
  assert.equal(ok.code, 0, ok.stderr);
  assert.deepEqual(JSON.parse(ok.stdout).map((a: { name: string }) => a.name), ['web']);
  const bad = await cli(`sha256:${'01:'.repeat(31)}01`);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /^error TLS_FINGERPRINT_MISMATCH/);
  assert.equal(localUrl('http', '::', 1), 'http://[::1]:1');
  assert.equal(localUrl('http', '10.0.0.1', 1), 'http://10.0.0.1:1');
});
