// Test helpers: an in-memory fake ControlService and a started API server on
// 127.0.0.1:0. Used by the api and cli tests only.
import { Readable } from 'node:stream';
import type { NodeInfo, NodeStatus } from '../wire/node.ts';
import type { FastifyInstance } from 'fastify';
import type { AddressInfo } from 'node:net';
import { ThawError } from '../errors.ts';
import type { AppView, ControlService, DeployResult } from '../control/types.ts';
import type { SeedRow, VolumeRow, WakeRow } from '../store/types.ts';
import type { VolumeSpec } from '../volume/spec.ts';
import { createApiServer } from './server.ts';

export const TEST_TOKEN = 'test-token-0123456789abcdef';
const T0 = '2024-01-01T00:00:00.000Z';

export function appView(name: string, over: Partial<AppView> = {}): AppView {
  return {
    name, state: 'asleep', version: 1, deployId: null, seedId: null, node: null, vmId: null, hostPort: null,
    idleTimeoutS: 300, wakeTimeoutS: null, error: null, createdAt: T0, updatedAt: T0, lastWakeAt: null, url: `http://${name}.localhost:8080/`, ...over,
  };
}

export function wakeRow(app: string, over: Partial<WakeRow> = {}): WakeRow {
  return {
    id: 'w1', app, at: T0, wallMs: 120, bootMode: 'snapshot', bootMs: 80, gateMs: 3, appStartMs: 0, pid: 42, fsErrors: 0,
    fallbackReason: null, node: 'local', seedSource: 'local', stages: { restore: 70 }, ...over,
  };
}

export function seedRow(app: string, over: Partial<SeedRow> = {}): SeedRow {
  return {
    id: 's1', app, deployId: 'd1', node: 'local', bytesApparent: 1 << 20, bytesAllocated: 1 << 19, bytesCompressed: null,
    replicated: false, manifestSha256: 'ab'.repeat(32), createdAt: T0, lastUsedAt: T0, ...over,
  };
}

/** Records calls; `deploy` reads the whole tarball stream into `received`. */
export class FakeService implements ControlService {
  apps = new Map<string, AppView>();
  env = new Map<string, Map<string, string>>();
  calls: { method: string; args: unknown[] }[] = [];
  received: Buffer | null = null;
  deployError: unknown = null;
  progressLines: string[] = [];
  /** Lines logs() yields; with follow it then yields 'following' and waits for the signal to abort. */
  logLines = ['line 1\n', 'line 2\n'];
  /** Settles when the iterator of the latest logs() call has finished. */
  logsEnded: Promise<void> = Promise.resolve();

  #get(name: string): AppView {
    const a = this.apps.get(name);
    if (!a) throw new ThawError('APP_NOT_FOUND', `no app ${name}`, { details: { name } });
    return a;
  }

  async createApp(name: string, opts: { idleTimeoutS?: number } = {}) {
    this.calls.push({ method: 'createApp', args: [name, opts] });
    if (this.apps.has(name)) throw new ThawError('APP_EXISTS', `app ${name} exists`);
    const a = appView(name, { state: 'created', idleTimeoutS: opts.idleTimeoutS ?? 300 });
    this.apps.set(name, a);
    return a;
  }
  async listApps() { return [...this.apps.values()]; }
  async getApp(name: string) { return this.#get(name); }
  async deleteApp(name: string, opts: { deleteVolume?: boolean } = {}) {
    this.calls.push({ method: 'deleteApp', args: [name, opts] });
    this.#get(name);
    this.apps.delete(name);
  }
  volumes: VolumeRow[] = [];
  async listVolumes() { return this.volumes; }
  async resizeVolume(name: string, sizeBytes: number) {
    this.calls.push({ method: 'resizeVolume', args: [name, sizeBytes] });
    const v = this.volumes.find((x) => x.app === name);
    if (!v) throw new ThawError('VOLUME_NOT_FOUND', `${name} has no volume`);
    v.sizeBytes = sizeBytes;
    return v;
  }
  async removeVolume(name: string) {
    this.calls.push({ method: 'removeVolume', args: [name] });
    this.volumes = this.volumes.filter((x) => x.app !== name);
  }
  async restoreVolume(name: string, node: string, backupId?: string) {
    this.calls.push({ method: 'restoreVolume', args: [name, node, backupId] });
    const id = backupId ?? 's-last';
    return {
      app: name, node, previousNode: 'a', backup: { id, key: `volumes/${name}/${id}.tar.zst`, sha256: 'ab'.repeat(32), bytes: 100 },
      sleep: { id, at: '2026-01-01T00:00:00.000Z', trigger: 'idle', node: 'a' }, ms: 5,
    };
  }
  async moveVolume(name: string, to: string) {
    this.calls.push({ method: 'moveVolume', args: [name, to] });
    return { app: name, from: 'a', to, via: 'direct' as const, bytes: 100, sha256: 'ab'.repeat(32), ms: 5 };
  }
  async deploy(name: string, tarball: Readable, opts: { env?: Record<string, string>; idleTimeoutS?: number; volume?: VolumeSpec; onProgress?: (line: string) => void } = {}): Promise<DeployResult> {
    this.calls.push({ method: 'deploy', args: [name, { env: opts.env, idleTimeoutS: opts.idleTimeoutS, ...(opts.volume ? { volume: opts.volume } : {}) }] });
    const chunks: Buffer[] = [];
    for await (const c of tarball) chunks.push(c as Buffer);
    this.received = Buffer.concat(chunks);
    for (const l of this.progressLines) opts.onProgress?.(l);
    if (this.deployError) throw this.deployError;
    if (!this.apps.has(name)) this.apps.set(name, appView(name));
    return { app: name, deploy: { id: 'd1', app: name, imagePath: '/img', imageBytes: this.received.length, createdAt: T0, runConfig: null }, purgedSeed: null, buildMs: 5 };
  }
  async setEnv(name: string, vars: Record<string, string>) {
    this.#get(name);
    const m = this.env.get(name) ?? new Map<string, string>();
    for (const [k, v] of Object.entries(vars)) m.set(k, v);
    this.env.set(name, m);
  }
  async unsetEnv(name: string, keys: string[]) {
    this.#get(name);
    for (const k of keys) this.env.get(name)?.delete(k);
  }
  async listEnv(name: string) {
    this.#get(name);
    return [...(this.env.get(name)?.keys() ?? [])].map((key) => ({ key, updatedAt: T0 }));
  }
  async sleep(name: string) {
    this.#get(name);
    return { baked: true, seed: seedRow(name) };
  }
  async wake(name: string) {
    this.#get(name);
    return wakeRow(name);
  }
  async sleeps(name: string, limit?: number) {
    this.calls.push({ method: 'sleeps', args: [name, limit] });
    this.#get(name);
    return [];
  }
  async wakes(name: string, limit?: number) {
    this.calls.push({ method: 'wakes', args: [name, limit] });
    this.#get(name);
    return [wakeRow(name)];
  }
  async seeds() { return [seedRow('a')]; }
  async logs(name: string, opts: { follow: boolean; signal?: AbortSignal }): Promise<AsyncIterable<string>> {
    this.#get(name);
    const lines = this.logLines;
    let done!: () => void;
    this.logsEnded = new Promise((r) => (done = r));
    return (async function* () {
      try {
        yield* lines;
        if (!opts.follow) return;
        yield 'following\n';
        // Like a real follow with no new output: only the abort signal ends the wait.
        await new Promise<void>((r) => (opts.signal?.aborted ? r() : opts.signal?.addEventListener('abort', () => r(), { once: true })));
      } finally {
        done();
      }
    })();
  }
  async metrics() { return { contentType: 'text/plain; version=0.0.4', body: 'thaw_up 1\n' }; }
  async heartbeat(st: NodeStatus) {
    this.calls.push({ method: 'heartbeat', args: [st] });
    return { stop: [] };
  }
  async nodes(): Promise<NodeInfo[]> {
    return [{ name: 'local', url: 'in-process', state: 'up', local: true, capacity: 4, running: 0, seeds: 1, last_heartbeat_at: null }];
  }
  async seedHolders() { return { s1: ['local'] }; }
  async deployImage(name: string, deployId: string) {
    this.#get(name);
    return { stream: Readable.from([Buffer.from(`image ${deployId}`)]), bytes: 14 };
  }
}

/** A listening API server over `service`; closed by the caller (t.after). */
export async function startServer(service: ControlService, opts: { maxTarballBytes?: number } = {}): Promise<{ app: FastifyInstance; url: string }> {
  const app = await createApiServer({ service, token: TEST_TOKEN, logger: false, ...opts });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  return { app, url: `http://127.0.0.1:${port}` };
}
