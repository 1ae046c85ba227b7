// Overload is explicit at the router: a wake still queued on its node when
// the hold time runs out answers 503 NODE_BUSY with Retry-After, and the
// queued wake is dropped once nobody waits (its signal aborts); a wake that
// ends at its overall deadline answers 503 WAKE_DEADLINE with Retry-After.
import assert from 'node:assert/strict';
import http from 'node:http';
import { test, type TestContext } from 'node:test';
import { ThawError } from '../errors.ts';
import { createRouter } from './router.ts';
import type { AppDirectory, WakeResult } from './types.ts';

class QueueDir implements AppDirectory {
  queued = true;
  signal: AbortSignal | null = null;
  failWith: ThawError | null = null;
  lookup(name: string) {
    return name === 'busy' ? { address: null, idleTimeoutS: 300 } : null;
  }
  wake(_name: string, opts: { signal?: AbortSignal } = {}): Promise<WakeResult> {
    this.signal = opts.signal ?? null;
    if (this.failWith) return Promise.reject(this.failWith);
    // A queued wake ends only when it is dropped.
    return new Promise((_, reject) => opts.signal?.addEventListener('abort', () => reject(new ThawError('WAKE_CANCELLED', 'dropped')), { once: true }));
  }
  wakeQueued() {
    return this.queued;
  }
  async sleep() {}
}

async function setup(t: TestContext, dir: QueueDir) {
  const router = createRouter({ dir, wakeTimeoutMs: 150 });
  const port = await router.listen(0, '127.0.0.1');
  t.after(() => router.close());
  return port;
}

function get(port: number): Promise<{ status: number; retryAfter: string | undefined; code: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/', headers: { host: 'busy.localhost' }, agent: false }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, retryAfter: res.headers['retry-after'], code: JSON.parse(body).error.code }));
      })
      .on('error', reject);
  });
}

test('a wake still queued at the hold time: 503 NODE_BUSY + Retry-After, and the queued wake is dropped', async (t) => {
  const dir = new QueueDir();
  const port = await setup(t, dir);
  const r = await get(port);
  assert.equal(r.status, 503);
  assert.equal(r.code, 'NODE_BUSY');
  assert.ok(Number(r.retryAfter) >= 1);
  assert.equal(dir.signal?.aborted, true, 'nobody waits: the wake is cancelled');
});

test('a started wake at the hold time keeps WAKE_TIMEOUT', async (t) => {
  const dir = new QueueDir();
  dir.queued = false;
  const port = await setup(t, dir);
  const r = await get(port);
  assert.equal(r.status, 503);
  assert.equal(r.code, 'WAKE_TIMEOUT');
});

test('a wake that ran past its overall deadline: 503 WAKE_DEADLINE + Retry-After to the held requests', async (t) => {
  const dir = new QueueDir();
  dir.failWith = new ThawError('WAKE_DEADLINE', 'past the deadline');
  const port = await setup(t, dir);
  const r = await get(port);
  assert.equal(r.status, 503);
  assert.equal(r.code, 'WAKE_DEADLINE');
  assert.ok(Number(r.retryAfter) >= 1);
});
