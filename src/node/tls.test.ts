// `thaw node` TLS setup: plain HTTP across a network warns loudly, on loopback
// it does not; pins need an https:// control URL; under an https:// control
// plane the node makes one self-signed certificate and keeps it.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import pino from 'pino';
import { ThawError } from '../errors.ts';
import { nodeTls } from './tls.ts';

function capture() {
  const lines: string[] = [];
  const log = pino({ level: 'info' }, new Writable({ write: (c, _e, cb) => void (lines.push(String(c)), cb()) }));
  return { log, lines };
}

test('plain HTTP to a control plane on another host warns; loopback does not; pins need https', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-node-tls-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const far = capture();
  const r = await nodeTls({ control: 'http://10.1.2.3:7070' }, dir, [], far.log);
  assert.equal(r.server, null);
  assert.match(far.lines.join(''), /plain HTTP across the network: the cluster token and env values travel in clear/);
  const near = capture();
  await nodeTls({ control: 'http://127.0.0.1:7070' }, dir, [], near.log);
  assert.deepEqual(near.lines, []);
  await assert.rejects(nodeTls({ control: 'http://10.1.2.3:7070', controlFingerprint: `sha256:${'AA'.repeat(32)}` }, dir, [], near.log), (e: unknown) => e instanceof ThawError && e.code === 'TLS_CONFIG_INVALID');
  await assert.rejects(nodeTls({ control: 'https://10.1.2.3:7070', tlsCert: '/x.crt' }, dir, [], near.log), (e: unknown) => e instanceof ThawError && e.code === 'TLS_CONFIG_INVALID');
});

test('under an https:// control plane the node serves a self-signed certificate it keeps across restarts', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-node-tls-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const { log } = capture();
  const a = await nodeTls({ control: 'https://10.1.2.3:7070', controlFingerprint: `sha256:${'AA'.repeat(32)}` }, dir, ['10.1.2.4'], log);
  assert.ok(a.server);
  assert.match(a.fingerprint ?? '', /^sha256:[0-9A-F:]{95}$/);
  assert.deepEqual(a.controlTrust, { fingerprint: 'AA'.repeat(32) });
  const b = await nodeTls({ control: 'https://10.1.2.3:7070' }, dir, ['10.1.2.4'], log);
  assert.equal(b.fingerprint, a.fingerprint);
});
