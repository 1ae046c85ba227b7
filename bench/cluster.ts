// Cluster benchmark: seeds across nodes, measured in one run on this host.
// A control plane without a local node, three `thaw node` processes, a real
// S3-protocol server (s3rver) and the demo app:
//   cold wake on a -> bake -> upload -> local thaws on a -> a leaves -> b pulls
//   and thaws -> b leaves -> c pulls and thaws -> redeploy -> cold wake.
// Plus pack and unpack of the same seed alone (to and from a local file), so
// the streamed upload/pull times can be split into their parts.
// Then the same app with each node on its own host (bench/cluster-multihost.ts):
// network namespaces on a bridge, TLS; cross-host thaw and pull beside the above.
//   node --import tsx bench/cluster.ts [--thaws 3]
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { request } from 'undici';
import { ApiClient } from '../src/api/client.ts';
import type { WakeWire } from '../src/api/schemas.ts';
import { startThaw, type Running } from '../src/control/up.ts';
import { packAppDir } from '../src/image/tarball.ts';
import { packSeed, unpackSeed } from '../src/seed/pack.ts';
import { UndoStack } from '../src/undo.ts';
import { spawnNode, type NodeProc } from '../test/helpers/nodeproc.ts';
import { S3RVER_CREDENTIALS, startS3Server } from '../test/helpers/s3server.ts';
import { benchMultihost } from './cluster-multihost.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

const HELLO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', 'examples', 'hello');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MiB = 1024 * 1024;

interface WakeSample { kind: 'cold' | 'local thaw' | 'cross-node thaw'; node: string | null; wall_ms: number; boot_mode: string; seed_source: string; seed_pull_ms: number | null; marker_ok: boolean }

/** `multihost: false` skips the phase with nodes on separate hosts (network namespaces; needs root). */
export async function benchCluster(opts: { thaws?: number; log?: (s: string) => void; multihost?: boolean } = {}) {
  const say = opts.log ?? ((s: string) => console.error(`[bench cluster] ${s}`));
  const thaws = opts.thaws ?? 3;
  const undo = new UndoStack();
  const facts = machineFacts();
  try {
    const s3 = await startS3Server();
    undo.push('stop s3rver', () => s3.stop());
    process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
    const root = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-cluster-'));
    undo.push('remove bench folder', () => rm(root, { recursive: true, force: true }));
    const ctl: Running = await startThaw(
      { data: path.join(root, 'control'), port: 0, apiPort: 0, domain: 'localhost', idleTimeout: 3600, s3Endpoint: s3.endpoint, s3Bucket: 'seeds', localNode: false, nodeDownAfterMs: 5000, maintenanceMs: 2000 },
      pino({ level: 'silent' }),
    );
    undo.push('stop control plane', () => ctl.stop());
    const api = new ApiClient({ url: ctl.apiUrl, token: ctl.token });
    undo.push('close client', () => api.close());
    const nodes = new Map<string, NodeProc>();
    for (const name of ['a', 'b', 'c']) {
      const n = spawnNode({ name, dir: path.join(root, name), control: ctl.apiUrl, tokenFile: path.join(root, 'control', 'token'), s3: { endpoint: s3.endpoint, bucket: 'seeds', ...S3RVER_CREDENTIALS } });
      nodes.set(name, n);
      undo.push(`stop node ${name}`, () => n.stop());
    }
    const until = async (what: string, ok: () => Promise<boolean>, ms = 120_000) => {
      for (const t0 = Date.now(); Date.now() - t0 < ms; await sleep(50)) if (await ok()) return;
      throw new Error(`timed out waiting for ${what}`);
    };
    await until('three nodes', async () => (await api.nodes()).filter((n) => n.state === 'up').length === 3);
    const routerPort = Number(new URL(ctl.routerUrl).port);
    const get = async () => {
      // A request held past the router's wake timeout (a loaded machine) is retried; the wake goes on.
      for (;;) {
        const r = await request(`http://127.0.0.1:${routerPort}/`, { headers: { host: 'hello.localhost' } });
        const body = (await r.body.json()) as { marker: string | null; error?: { code: string } };
        if (r.statusCode !== 503 || body.error?.code !== 'WAKE_TIMEOUT') return body;
      }
    };
    const samples: WakeSample[] = [];
    const wake = async (kind: WakeSample['kind']) => {
      const body = await get();
      const w = (await api.wakes('hello', 1))[0] as WakeWire;
      const s: WakeSample = { kind, node: w.node, wall_ms: w.wall_ms, boot_mode: w.boot_mode, seed_source: w.seed_source, seed_pull_ms: w.stages.seed_pull ?? null, marker_ok: kind === 'cold' || body.marker === 'bench-marker' };
      samples.push(s);
      say(`${kind}: ${s.wall_ms} ms on ${s.node} (${s.boot_mode}, seed ${s.seed_source}${s.seed_pull_ms ? `, pull ${s.seed_pull_ms} ms` : ''})`);
      if (kind !== 'cold' && s.boot_mode !== 'snapshot') throw new Error(`expected a thaw, got ${s.boot_mode}: ${w.fallback_reason}`);
      return s;
    };

    say('deploy + cold wake on a');
    await api.deploy('hello', await packAppDir(HELLO), { env: { WHO: 'bench' } });
    await wake('cold');
    await request(`http://127.0.0.1:${routerPort}/`, { method: 'POST', body: 'bench-marker', headers: { host: 'hello.localhost' } }).then((r) => r.body.dump());
    const t0 = performance.now();
    const slept = await api.sleep('hello');
    const bakeMs = performance.now() - t0;
    const seedId = slept.seed!.id;
    await until('replicated', async () => !!(await api.seeds()).find((s) => s.id === seedId)?.replicated);
    const uploadWallMs = performance.now() - t0 - bakeMs;
    const seed = (await api.seeds()).find((s) => s.id === seedId)!;
    const uploadMs = await transferSeconds(api, 'a', 'upload');

    for (let i = 0; i < thaws; i++) {
      await wake('local thaw');
      await api.sleep('hello');
    }
    let pullMs: number | null = null;
    for (const [leaving, puller] of [['a', 'b'], ['b', 'c']] as const) {
      await nodes.get(leaving)!.stop(); // graceful: the control plane takes it out at once
      await wake('cross-node thaw');
      pullMs ??= await transferSeconds(api, puller, 'pull');
      await api.sleep('hello');
    }

    say('pack and unpack the same seed alone, to and from a local file');
    const seedDir = path.join(root, 'a', 'node', 'seeds', seedId);
    const file = path.join(root, 'seed.tar.zst');
    let t = performance.now();
    const pack = packSeed(seedDir);
    await pipeline(pack.stream, createWriteStream(file));
    const packed = await pack.done;
    const packMs = performance.now() - t;
    t = performance.now();
    await unpackSeed(createReadStream(file), path.join(root, 'unpacked'));
    const unpackMs = performance.now() - t;
    const fileBytes = (await stat(file)).size;

    say('redeploy + cold wake');
    await api.deploy('hello', await packAppDir(HELLO));
    await wake('cold');
    await api.sleep('hello');

    const multihost = opts.multihost === false ? null : await benchMultihost('hello', say);
    const crossHost = multihost?.wakes.find((w) => w.kind === 'cross-host thaw') ?? null;
    const crossNode = samples.find((s) => s.kind === 'cross-node thaw')!;

    const by = (k: WakeSample['kind']) => samples.filter((s) => s.kind === k).map((s) => s.wall_ms);
    const result = {
      machine: facts,
      seed: {
        bytes_apparent: seed.bytes_apparent,
        bytes_allocated: seed.bytes_allocated,
        bytes_compressed: seed.bytes_compressed,
        ratio_apparent_to_compressed: seed.bytes_compressed ? seed.bytes_apparent / seed.bytes_compressed : null,
        ratio_allocated_to_compressed: seed.bytes_compressed ? seed.bytes_allocated / seed.bytes_compressed : null,
      },
      bake_ms: Math.round(bakeMs),
      pack_ms: Math.round(packMs),
      pack_bytes_out: packed.bytesOut,
      pack_file_bytes: fileBytes,
      unpack_ms: Math.round(unpackMs),
      upload_ms: uploadMs,
      upload_wall_after_bake_ms: Math.round(uploadWallMs),
      pull_ms: pullMs,
      wakes: samples,
      median_ms: { cold: median(by('cold')), local_thaw: median(by('local thaw')), cross_node_thaw: median(by('cross-node thaw')) },
      multihost,
    };
    const m = result.median_ms;
    const md = [
      '# Cluster benchmark',
      '',
      'Control plane without a local node, three `thaw node` processes, s3rver on the same host, demo app examples/hello; all VMs under the same accelerator as the lifecycle benchmark. One run.',
      '',
      markdownTable(['seed bytes', 'MiB'], [
        ['apparent', fmt(seed.bytes_apparent / MiB, 1)],
        ['allocated (on disk)', fmt(seed.bytes_allocated / MiB, 1)],
        ['compressed (object)', fmt((seed.bytes_compressed ?? 0) / MiB, 1)],
      ]),
      '',
      `Ratios: apparent/compressed **${fmt(result.seed.ratio_apparent_to_compressed, 1)}x**, allocated/compressed ${fmt(result.seed.ratio_allocated_to_compressed, 1)}x.`,
      '',
      markdownTable(['step', 'ms', 'notes'], [
        ['bake', result.bake_ms, 'VM paused once; sleep returns here'],
        ['pack alone', result.pack_ms, 'sparse tar + zstd to a local file'],
        ['unpack alone', result.unpack_ms, 'zstd + tar from a local file, every file verified'],
        ['upload (node a)', fmt(uploadMs, 0), 'pack + multipart upload, streamed, checked'],
        ['replicated after the bake', result.upload_wall_after_bake_ms, 'wall, in the background'],
        ['pull (node b)', fmt(pullMs, 0), 'download + unpack + verify, streamed'],
      ]),
      '',
      markdownTable(['wake', 'node', 'wall ms', 'mode', 'seed', 'pull ms'], samples.map((s) => [s.kind, s.node ?? '', s.wall_ms, s.boot_mode, s.seed_source, s.seed_pull_ms ?? ''])),
      '',
      ...(multihost && crossHost
        ? [
            '## Nodes on separate hosts',
            '',
            `Same run, second phase: ${multihost.layout}. Two nodes; a bakes, leaves, and b pulls the seed over the bridge and thaws it.`,
            '',
            markdownTable(['', 'single host (loopback, HTTP)', 'separate hosts (bridge, TLS)'], [
              ['cold wake wall ms', samples.find((s) => s.kind === 'cold')!.wall_ms, multihost.wakes.find((w) => w.kind === 'cold')?.wall_ms ?? ''],
              ['bake ms', result.bake_ms, multihost.bake_ms],
              ['replicated after the bake ms', result.upload_wall_after_bake_ms, multihost.replicated_after_bake_ms],
              ['cross-node thaw wall ms (first)', crossNode.wall_ms, crossHost.wall_ms],
              ['of which seed pull ms', crossNode.seed_pull_ms ?? '', crossHost.seed_pull_ms ?? ''],
            ]),
            '',
          ]
        : []),
      `Medians: cold ${m.cold} ms, local thaw ${m.local_thaw} ms, cross-node thaw ${m.cross_node_thaw} ms. Cold/local thaw ${fmt(m.cold / m.local_thaw, 2)}x, cold/cross-node thaw ${fmt(m.cold / m.cross_node_thaw, 2)}x.`,
      '',
      `Machine: ${facts.cores} cores, ${facts.memoryMiB} MiB, Node ${facts.node}, load average at start ${facts.loadavg.map((x) => x.toFixed(2)).join(' / ')}.`,
    ].join('\n');
    const out = await writeResult('cluster', result, `${md}\n`);
    say(`wrote ${out.mdPath}`);
    return result;
  } finally {
    await undo.unwind();
  }
}

/** Sum of a node's transfer durations, from its /metrics (ms). */
async function transferSeconds(api: ApiClient, node: string, direction: 'upload' | 'pull'): Promise<number | null> {
  const n = (await api.nodes()).find((x) => x.name === node);
  if (!n || n.state !== 'up') return null;
  const text = await (await request(`${n.url}/metrics`)).body.text();
  const m = new RegExp(`thaw_node_seed_transfer_seconds_sum\\{direction="${direction}"\\} ([0-9.e+-]+)`).exec(text);
  return m ? Math.round(Number(m[1]) * 1000) : null;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { thaws: { type: 'string', default: '3' } } });
  benchCluster({ thaws: Number(values.thaws) }).catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}
