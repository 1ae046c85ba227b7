// TLS plumbing against real HTTPS servers with certificates made by openssl:
// a pinned CA or leaf fingerprint is accepted, a wrong one refused with
// TLS_FINGERPRINT_MISMATCH, a CA file verifies chain and address, no trust at
// all is TLS_UNTRUSTED; certificates are re-issued only when they no longer fit.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { Agent, request } from 'undici';
import { ThawError } from '../errors.ts';
import { ensureClusterCa, ensureServerCert } from './certs.ts';
import { connectOptions, fingerprintOf, loadServerTls, normalizeFingerprint, tlsError, type PeerTrust, type ServerTls } from './tls.ts';

async function serve(t: TestContext, tls: ServerTls): Promise<string> {
  const server = https.createServer(tls, (_req, res) => res.end('ok'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => server.close(r)));
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function get(url: string, trust: PeerTrust): Promise<string> {
  const agent = new Agent({ connect: connectOptions(trust, 3000, 'the test server') });
  try {
    return await (await request(url, { dispatcher: agent })).body.text();
  } catch (err) {
    throw tlsError(err, 'the test server');
  } finally {
    await agent.close();
  }
}

const code = (c: string) => (e: unknown) => e instanceof ThawError && e.code === c;

test('cluster CA + signed server certificate: pin the CA or the leaf, or trust the CA file; a wrong pin or no trust is refused', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-tls-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ca = await ensureClusterCa(dir);
  assert.equal((await stat(ca.key)).mode & 0o777, 0o600);
  const leaf = await ensureServerCert({ cert: path.join(dir, 'api.crt'), key: path.join(dir, 'api.key') }, { cn: 'test', names: ['127.0.0.1', 'localhost'], ca });
  const caPem = await readFile(ca.cert, 'utf8');
  const url = await serve(t, await loadServerTls(leaf, caPem));

  assert.equal(await get(url, { fingerprint: fingerprintOf(caPem) }), 'ok');
  assert.equal(await get(url, { fingerprint: fingerprintOf(await readFile(leaf.cert)) }), 'ok');
  assert.equal(await get(url, { ca: caPem }), 'ok');
  await assert.rejects(get(url, { fingerprint: `sha256:${'00'.repeat(32)}` }), (e: unknown) => code('TLS_FINGERPRINT_MISMATCH')(e) && /does not match the pinned fingerprint/.test((e as Error).message));
  await assert.rejects(get(url, {}), code('TLS_UNTRUSTED'));

  // A certificate for another address does not verify against the CA by address.
  const other = await ensureServerCert({ cert: path.join(dir, 'o.crt'), key: path.join(dir, 'o.key') }, { cn: 'other', names: ['10.9.9.9'], ca });
  const otherUrl = await serve(t, await loadServerTls(other, caPem));
  await assert.rejects(get(otherUrl, { ca: caPem }), code('TLS_UNTRUSTED'));

  // A self-signed leaf that merely claims the CA's name does not pass a CA pin.
  const fake = await ensureServerCert({ cert: path.join(dir, 'f.crt'), key: path.join(dir, 'f.key') }, { cn: 'thaw cluster CA', names: ['127.0.0.1'] });
  const fakeUrl = await serve(t, await loadServerTls(fake, caPem));
  await assert.rejects(get(fakeUrl, { fingerprint: fingerprintOf(caPem) }), code('TLS_FINGERPRINT_MISMATCH'));
});

test('certificates are kept while they fit and re-issued for a new name', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-tls-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ca = await ensureClusterCa(dir);
  const caFp = fingerprintOf(await readFile(ca.cert));
  assert.equal(fingerprintOf(await readFile((await ensureClusterCa(dir)).cert)), caFp, 'the CA is made once');
  const files = { cert: path.join(dir, 'a.crt'), key: path.join(dir, 'a.key') };
  await ensureServerCert(files, { cn: 'a', names: ['127.0.0.1'], ca });
  const first = fingerprintOf(await readFile(files.cert));
  await ensureServerCert(files, { cn: 'a', names: ['127.0.0.1'], ca });
  assert.equal(fingerprintOf(await readFile(files.cert)), first);
  await ensureServerCert(files, { cn: 'a', names: ['127.0.0.1', '10.1.2.3', 'thaw.example'], ca });
  assert.notEqual(fingerprintOf(await readFile(files.cert)), first);
});

test('fingerprints: printed and pasted forms agree; junk and half a cert/key pair are TLS_CONFIG_INVALID', async () => {
  const hex = 'AB'.repeat(32);
  assert.equal(normalizeFingerprint(`sha256:${hex.replace(/(..)(?!$)/g, '$1:')}`), hex);
  assert.equal(normalizeFingerprint(hex.toLowerCase()), hex);
  assert.throws(() => normalizeFingerprint('sha256:AB:CD'), code('TLS_CONFIG_INVALID'));
  await assert.rejects(loadServerTls({ cert: '/nonexistent.crt', key: '/nonexistent.key' }), code('TLS_CONFIG_INVALID'));
});
