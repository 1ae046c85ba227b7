// The cluster benchmark's multi-host phase: the same demo app, but each
// `thaw node` on its own "host" (a network namespace on a test bridge, see
// test/helpers/hosts.ts), the control API and node APIs over TLS, S3 reached
// over the bridge. Cold wake on a -> bake -> replicated -> a leaves -> b
// pulls and thaws. Run by bench/cluster.ts after the single-host phase.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { request } from 'undici';
import { ApiClient } from '../src/api/client.ts';
import { startThaw } from '../src/control/up.ts';
import { packAppDir } from '../src/image/tarball.ts';
import { UndoStack } from '../src/undo.ts';
import { createHostNet } from '../test/helpers/hosts.ts';
import { spawnNode } from '../test/helpers/nodeproc.ts';
import { S3RVER_CREDENTIALS, startS3Server } from '../test/helpers/s3server.ts';

export interface HostWake {
  kind: 'cold' | 'cross-host thaw';
  node: string | null;
  wall_ms: number;
  boot_mode: string;
  seed_source: string;
  seed_pull_ms: number | null;
}

export interface MultihostResult {
  layout: string;
  bake_ms: number;
  replicated_after_bake_ms: number;
  wakes: HostWake[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function benchMultihost(app: string, say: (s: string) => void): Promise<MultihostResult> {
  const undo = new UndoStack();
  try {
    const net = createHostNet(['a', 'b'], { prefix: 'thawhostb', subnet: '10.199.18' });
    undo.push('remove namespaces and bridge', () => net.close());
    const s3 = await startS3Server({ address: net.gateway });
    undo.push('stop s3rver', () => s3.stop());
    const root = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-multihost-'));
    undo.push('remove bench folder', () => rm(root, { recursive: true, force: true }));
    const ctl = await startThaw(
      { data: path.join(root, 'control'), port: 0, apiPort: 0, host: net.gateway, tls: true, domain: 'localhost', idleTimeout: 3600, s3Endpoint: s3.endpoint, s3Bucket: 'seeds', localNode: false, nodeDownAfterMs: 5000, maintenanceMs: 2000 },
      pino({ level: 'silent' }),
    );
    undo.push('stop control plane', () => ctl.stop());
    const api = new ApiClient({ url: ctl.apiUrl, token: ctl.token, trust: { fingerprint: ctl.apiFingerprint! } });
    undo.push('close client', () => api.close());
    const nodes = ['a', 'b'].map((name) => {
      const n = spawnNode({
        name, dir: path.join(root, name), control: ctl.apiUrl, tokenFile: path.join(root, 'control', 'token'), wrap: net.exec(name),
        s3: { endpoint: s3.endpoint, bucket: 'seeds', ...S3RVER_CREDENTIALS },
        extraArgs: ['--host', net.hosts.get(name)!.ip, '--control-fingerprint', ctl.apiFingerprint!],
      });
      undo.push(`stop node ${name}`, () => n.stop());
      return n;
    });
    const until = async (what: string, ok: () => Promise<boolean>, ms = 180_000) => {
      for (const t0 = Date.now(); Date.now() - t0 < ms; await sleep(50)) if (await ok()) return;
      throw new Error(`timed out waiting for ${what}`);
    };
    await until('two nodes on their hosts', async () => (await api.nodes()).filter((n) => n.state === 'up').length === 2);
    const wakes: HostWake[] = [];
    const wake = async (kind: HostWake['kind']) => {
      for (;;) {
        const r = await request(`${ctl.routerUrl}/`, { headers: { host: `${app}.localhost` } });
        const text = await r.body.text();
        if (r.statusCode !== 503 || !text.includes('WAKE_TIMEOUT')) break; // held past the router's wake timeout: the wake goes on
      }
      const w = (await api.wakes(app, 1))[0]!;
      const s = { kind, node: w.node, wall_ms: w.wall_ms, boot_mode: w.boot_mode, seed_source: w.seed_source, seed_pull_ms: w.stages.seed_pull ?? null };
      say(`multi-host ${kind}: ${s.wall_ms} ms on ${s.node} (${s.boot_mode}, seed ${s.seed_source}${s.seed_pull_ms ? `, pull ${s.seed_pull_ms} ms` : ''})`);
      if (kind !== 'cold' && s.boot_mode !== 'snapshot') throw new Error(`expected a thaw, got ${s.boot_mode}: ${w.fallback_reason}`);
      wakes.push(s);
    };
    say('multi-host: deploy + cold wake on host a');
    await api.deploy(app, await packAppDir(path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', 'examples', 'hello')));
    await wake('cold');
    const t0 = performance.now();
    const seedId = (await api.sleep(app)).seed!.id;
    const bakeMs = performance.now() - t0;
    await until('replicated', async () => !!(await api.seeds()).find((s) => s.id === seedId)?.replicated);
    const replicatedMs = performance.now() - t0 - bakeMs;
    await nodes[0]!.stop(); // a leaves: b must pull the seed over the bridge
    await wake('cross-host thaw');
    await api.sleep(app);
    return { layout: `nodes in network namespaces ${[...net.hosts.values()].map((h) => h.ip).join(', ')} on bridge ${net.bridge}, control API and S3 at ${net.gateway}, TLS`, bake_ms: Math.round(bakeMs), replicated_after_bake_ms: Math.round(replicatedMs), wakes };
  } finally {
    await undo.unwind();
  }
}
