// RemoteNode: the control plane's handle on a `thaw node` process. Same NodeApi
// as the in-process NodeAgent, over HTTP; answers are parsed with the schemas
// in src/wire/node.ts. A node that does not answer (refused, reset, killed
// mid-request) is NODE_UNREACHABLE, which lets the scheduler try another node.
import { Pool, type Dispatcher } from 'undici';
import { z } from 'zod';
import { errorFromBody } from '../http/errors.ts';
import { connectOptions, tlsError, type PeerTrust } from '../http/tls.ts';
import { ThawError } from '../errors.ts';
import type { Readable } from 'node:stream';
import { NodeSleepResponse, NodeUploadResponse, NodeWakeResponse, VolumePacked, VolumeTransferResult, type NodeSleepRequest, type NodeWakeRequest, type SeedRef } from '../wire/node.ts';
import type { NodeApi } from './types.ts';

const Ok = z.object({ ok: z.literal(true) });
const Logs = z.object({ text: z.string() });
const Health = z.object({ name: z.string() });

export class RemoteNode implements NodeApi {
  private readonly pool: Pool;
  /** Path prefix of the node's URL (a node behind a reverse proxy). */
  private readonly base: string;

  /** `trust`: how an https:// node's certificate is checked (its pinned fingerprint, or a CA). */
  constructor(readonly name: string, readonly url: string, private readonly token: string, trust: PeerTrust = {}) {
    const u = new URL(url);
    this.base = u.pathname.replace(/\/+$/, '');
    this.pool = new Pool(u.origin, { connect: connectOptions(trust, 3000, `node ${name} (${url})`), connections: 16 });
  }

  /**
   * At join: the node answers at its URL, over verified TLS when https, and is
   * the node it claims to be. NODE_ADVERTISE_UNREACHABLE otherwise.
   */
  async probe(timeoutMs = 2000): Promise<void> {
    let who: string;
    try {
      who = (await this.call(Health, 'GET', '/healthz', undefined, timeoutMs)).name;
    } catch (err) {
      const why = err instanceof ThawError && err.cause instanceof ThawError ? err.cause : err;
      throw new ThawError('NODE_ADVERTISE_UNREACHABLE', `node ${this.name} advertises ${this.url}, but the control plane cannot reach it there: ${(why as Error).message}`, {
        cause: why,
        details: { node: this.name, url: this.url, ...(why instanceof ThawError ? { reason: why.code } : {}) },
      });
    }
    if (who !== this.name) {
      throw new ThawError('NODE_ADVERTISE_UNREACHABLE', `node ${this.name} advertises ${this.url}, but node ${who} answers there`, { details: { node: this.name, url: this.url } });
    }
  }

  /**
   * `timeoutMs`: how long the node may take to answer. A killed node shows up at once
   * (refused or reset); a partitioned one only through this bound.
   */
  private async call<S extends z.ZodType>(schema: S, method: Dispatcher.HttpMethod, path: string, body?: unknown, timeoutMs = 30_000): Promise<z.output<S>> {
    let res: Dispatcher.ResponseData;
    try {
      res = await this.pool.request({
        method,
        path: `${this.base}${path}`,
        headers: { authorization: `Bearer ${this.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
    } catch (e) {
      const err = tlsError(e, `node ${this.name} (${this.url})`);
      throw new ThawError('NODE_UNREACHABLE', `node ${this.name} (${this.url}) did not answer ${method} ${path}: ${(err as Error).message}`, { cause: err, details: { node: this.name } });
    }
    let json: unknown;
    try {
      json = await res.body.json();
    } catch (err) {
      throw new ThawError('NODE_UNREACHABLE', `node ${this.name} broke off its answer to ${method} ${path}: ${(err as Error).message}`, { cause: err, details: { node: this.name } });
    }
    if (res.statusCode >= 400) throw errorFromBody(res.statusCode, json);
    const r = schema.safeParse(json);
    if (!r.success) throw new ThawError('INTERNAL', `node ${this.name} answered ${method} ${path} outside the protocol: ${r.error.message}`);
    return r.data;
  }

  async wake(req: NodeWakeRequest, opts: { signal?: AbortSignal } = {}) {
    // Nobody waits any more: ask the node to drop the wake if it is still queued. The call
    // itself goes on and answers WAKE_CANCELLED, or the record of a wake that had started.
    const cancel = () => void this.call(Ok, 'POST', `/v1/apps/${req.app}/cancel-wake`, {}).catch(() => {});
    opts.signal?.addEventListener('abort', cancel, { once: true });
    try {
      // A pull, a queue wait, a failed thaw and a cold boot (each with its own deadlines on the node) fit well within.
      return await this.call(NodeWakeResponse, 'POST', '/v1/wake', req, 10 * 60_000);
    } finally {
      opts.signal?.removeEventListener('abort', cancel);
    }
  }

  sleep(req: NodeSleepRequest) {
    return this.call(NodeSleepResponse, 'POST', '/v1/sleep', req, 5 * 60_000);
  }

  async stop(app: string, vmId?: string): Promise<void> {
    await this.call(Ok, 'POST', `/v1/apps/${app}/stop`, vmId ? { vmId } : {});
  }

  async logs(app: string): Promise<string> {
    return (await this.call(Logs, 'GET', `/v1/apps/${app}/logs`)).text;
  }

  async forgetApp(app: string): Promise<void> {
    await this.call(Ok, 'DELETE', `/v1/apps/${app}`);
  }

  async deleteVolume(app: string): Promise<void> {
    await this.call(Ok, 'DELETE', `/v1/apps/${app}/volume`);
  }

  uploadSeed(seed: SeedRef) {
    return this.call(NodeUploadResponse, 'POST', `/v1/seeds/${seed.id}/upload`, seed, 60 * 60_000);
  }

  async deleteSeed(seedId: string): Promise<void> {
    await this.call(Ok, 'DELETE', `/v1/seeds/${seedId}`);
  }

  packVolume(app: string, id: string) {
    return this.call(VolumePacked, 'POST', `/v1/apps/${app}/volume/packed/${id}`, {}, 30 * 60_000);
  }

  uploadVolumeBackup(app: string, id: string, key: string, sha256: string) {
    return this.call(VolumeTransferResult, 'POST', `/v1/apps/${app}/volume/packed/${id}/upload`, { key, sha256 }, 60 * 60_000);
  }

  async readPackedVolume(app: string, id: string): Promise<Readable> {
    const res = await this.raw({ method: 'GET', path: `/v1/apps/${app}/volume/packed/${id}` });
    return res.body;
  }

  async dropPackedVolume(app: string, id: string): Promise<void> {
    await this.call(Ok, 'DELETE', `/v1/apps/${app}/volume/packed/${id}`);
  }

  async importVolume(app: string, body: Readable, sha256: string) {
    const res = await this.raw({ method: 'PUT', path: `/v1/apps/${app}/volume/import`, body, headers: { 'content-type': 'application/octet-stream', 'x-thaw-sha256': sha256 } });
    return VolumeTransferResult.parse(await res.body.json());
  }

  restoreVolume(app: string, key: string, sha256: string) {
    return this.call(VolumeTransferResult, 'POST', `/v1/apps/${app}/volume/restore`, { key, sha256 }, 60 * 60_000);
  }

  /** A streamed request (volume moves): errors as in call(); a 2xx answer's body is the caller's to read. */
  private async raw(o: { method: Dispatcher.HttpMethod; path: string; body?: Readable; headers?: Record<string, string> }): Promise<Dispatcher.ResponseData> {
    let res: Dispatcher.ResponseData;
    try {
      res = await this.pool.request({ method: o.method, path: `${this.base}${o.path}`, headers: { authorization: `Bearer ${this.token}`, ...o.headers }, ...(o.body ? { body: o.body } : {}), headersTimeout: 60 * 60_000, bodyTimeout: 5 * 60_000 });
    } catch (e) {
      const err = tlsError(e, `node ${this.name} (${this.url})`);
      throw new ThawError('NODE_UNREACHABLE', `node ${this.name} (${this.url}) did not answer ${o.method} ${o.path}: ${(err as Error).message}`, { cause: err, details: { node: this.name } });
    }
    if (res.statusCode >= 400) throw errorFromBody(res.statusCode, await res.body.json().catch(() => null));
    return res;
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
