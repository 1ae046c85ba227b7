// RemoteNode: the control plane's handle on a `thaw node` process. Same NodeApi
// as the in-process NodeAgent, over HTTP; answers are parsed with the schemas
// in src/wire/node.ts. A node that does not answer (refused, reset, killed
// mid-request) is NODE_UNREACHABLE, which lets the scheduler try another node.
import { Pool, type Dispatcher } from 'undici';
import { z } from 'zod';
import { errorFromBody } from '../http/errors.ts';
import { ThawError } from '../errors.ts';
import { NodeSleepResponse, NodeUploadResponse, NodeWakeResponse, type NodeSleepRequest, type NodeWakeRequest, type SeedRef } from '../wire/node.ts';
import type { NodeApi } from './types.ts';

const Ok = z.object({ ok: z.literal(true) });
const Logs = z.object({ text: z.string() });

export class RemoteNode implements NodeApi {
  private readonly pool: Pool;
  /** Path prefix of the node's URL (a node behind a reverse proxy). */
  private readonly base: string;

  constructor(readonly name: string, readonly url: string, private readonly token: string) {
    const u = new URL(url);
    this.base = u.pathname.replace(/\/+$/, '');
    this.pool = new Pool(u.origin, { connect: { timeout: 3000 }, connections: 16 });
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
    } catch (err) {
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

  wake(req: NodeWakeRequest) {
    // A pull, a failed thaw and a cold boot (each with its own deadlines on the node) fit well within.
    return this.call(NodeWakeResponse, 'POST', '/v1/wake', req, 10 * 60_000);
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

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
