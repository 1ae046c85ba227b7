// Typed client for the control API (used by the CLI). Responses are parsed
// with the same zod schemas the server uses; error bodies become ThawErrors
// with the server's code; a refused connection becomes NOT_RUNNING.
import { egressHeader, type Egress } from '../network/egress.ts';
import { errorFromBody } from '../http/errors.ts';
import { connectOptions, tlsError, type PeerTrust } from '../http/tls.ts';
import type { Readable } from 'node:stream';
import { Agent, request } from 'undici';
import type { z } from 'zod';
import { ThawError } from '../errors.ts';
import {
  type ImageDeployBody,
  AppResponse,
  DashboardLoginResponse,
  AppsResponse,
  DeployResultWire,
  EnvListResponse,
  OkResponse,
  ProgressLine,
  SeedsResponse,
  SleepResponse,
  SleepsResponse,
  WakeResponse,
  WakesResponse,
  type AppWire,
  type EnvKeyWire,
  type SeedWire,
  type SleepWire,
  type WakeWire,
} from './schemas.ts';
import { NodesResponse, type NodeInfo } from '../wire/node.ts';
import { VolumeMoveResponse, VolumeResponse, VolumeRestoreResponse, VolumesResponse, type VolumeWire } from './volumes.ts';

export interface DeployOpts {
  env?: Record<string, string>;
  idleTimeoutS?: number;
  /** Seconds a request is held for the app's wake before 503 (x-thaw-wake-timeout). */
  wakeTimeoutS?: number;
  /** What the app's VMs may reach (`--egress`, `--egress-allow`). */
  egress?: Egress;
  /** Run the build step even when node_modules is shipped (`x-thaw-build: 1`). */
  build?: boolean;
  /** The app's volume: `/PATH[:SIZE]` (x-thaw-volume). */
  volume?: string;
  /** When set, the server streams progress lines (`?progress=1`). */
  onProgress?: (line: string) => void;
}

/** What the CLI needs from the API; ApiClient implements it, tests fake it. */
export interface ThawApi {
  health(): Promise<{ ok: true }>;
  metrics(): Promise<string>;
  listApps(): Promise<AppWire[]>;
  createApp(name: string, opts?: { idleTimeoutS?: number }): Promise<AppWire>;
  getApp(name: string): Promise<AppWire>;
  deleteApp(name: string, opts?: { deleteVolume?: boolean }): Promise<void>;
  listVolumes(): Promise<VolumeWire[]>;
  resizeVolume(name: string, size: string): Promise<VolumeWire>;
  removeVolume(name: string): Promise<void>;
  restoreVolume(name: string, node: string, backup?: string): Promise<z.infer<typeof VolumeRestoreResponse>>;
  moveVolume(name: string, to: string): Promise<z.infer<typeof VolumeMoveResponse>>;
  /** Deploy a Node folder's tarball, or an OCI image (ImageDeployBody). */
  deploy(name: string, source: Buffer | Readable | ImageDeployBody, opts?: DeployOpts): Promise<DeployResultWire>;
  listEnv(name: string): Promise<EnvKeyWire[]>;
  setEnv(name: string, vars: Record<string, string>): Promise<void>;
  unsetEnv(name: string, keys: string[]): Promise<void>;
  sleep(name: string): Promise<{ baked: boolean; seed: SeedWire | null; sleep?: SleepWire | null | undefined }>;
  /** Sleep records, newest first. */
  sleeps(name: string, limit?: number): Promise<SleepWire[]>;
  wake(name: string): Promise<WakeWire>;
  wakes(name: string, limit?: number): Promise<WakeWire[]>;
  seeds(): Promise<SeedWire[]>;
  nodes(): Promise<NodeInfo[]>;
  /** A one-time dashboard sign-in URL (absolute, on the API's address) and when it expires. */
  dashboardLogin(): Promise<{ url: string; expires_at: string }>;
  /** Log text; with follow, keeps yielding until `signal` aborts or the server ends the stream. */
  logs(name: string, opts?: { follow?: boolean; signal?: AbortSignal }): Promise<AsyncIterable<string>>;
  close(): Promise<void>;
}

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';
type Res = Awaited<ReturnType<typeof request>>;
const REFUSED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENOENT']);


export class ApiClient implements ThawApi {
  readonly url: string;
  readonly #token: string;
  readonly #agent: Agent;

  /** `trust`: how an https:// API's certificate is checked (a CA or a pinned fingerprint; default the system CAs). */
  constructor(opts: { url: string; token: string; trust?: PeerTrust }) {
    this.url = opts.url.replace(/\/+$/, '');
    this.#token = opts.token;
    this.#agent = new Agent({ connect: connectOptions(opts.trust ?? {}, 5000, `the control API at ${this.url}`) });
  }

  async close(): Promise<void> {
    await this.#agent.close();
  }

  async #send(method: Method, path: string, opts: { json?: unknown; body?: Buffer | Readable; headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<Res> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.#token}`, ...opts.headers };
    let body: string | Buffer | Readable | undefined = opts.body;
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.json);
    }
    try {
      return await request(`${this.url}${path}`, { method, headers, body, dispatcher: this.#agent, ...(opts.signal ? { signal: opts.signal } : {}) });
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
      const code = e?.code ?? e?.cause?.code ?? '';
      if (REFUSED.has(code)) {
        throw new ThawError('NOT_RUNNING', `nothing answers at ${this.url} (${code}); is \`thaw up\` running?`, { cause: err, details: { url: this.url } });
      }
      if (e?.name === 'AbortError') throw err;
      const tls = tlsError(err, `the control API at ${this.url}`);
      if (tls instanceof ThawError) throw tls;
      throw new ThawError('INTERNAL', `control API request ${method} ${path} failed: ${e?.message ?? String(err)}`, { cause: err, details: { url: this.url } });
    }
  }

  async #json<S extends z.ZodType>(schema: S, method: Method, path: string, json?: unknown): Promise<z.output<S>> {
    const res = await this.#send(method, path, json === undefined ? {} : { json });
    return parseResponse(schema, res, path);
  }

  health() {
    return this.#json(OkResponse, 'GET', '/healthz');
  }

  async metrics(): Promise<string> {
    const res = await this.#send('GET', '/metrics');
    if (res.statusCode !== 200) throw errorFromBody(res.statusCode, await res.body.json().catch(() => null));
    return res.body.text();
  }

  async listApps() {
    return (await this.#json(AppsResponse, 'GET', '/v1/apps')).apps;
  }

  async createApp(name: string, opts: { idleTimeoutS?: number } = {}) {
    const body = { name, ...(opts.idleTimeoutS !== undefined ? { idle_timeout_s: opts.idleTimeoutS } : {}) };
    return (await this.#json(AppResponse, 'POST', '/v1/apps', body)).app;
  }

  async getApp(name: string) {
    return (await this.#json(AppResponse, 'GET', `/v1/apps/${enc(name)}`)).app;
  }

  async deleteApp(name: string, opts: { deleteVolume?: boolean } = {}): Promise<void> {
    await this.#json(OkResponse, 'DELETE', `/v1/apps/${enc(name)}${opts.deleteVolume ? '?delete_volume=1' : ''}`);
  }

  async listVolumes() {
    return (await this.#json(VolumesResponse, 'GET', '/v1/volumes')).volumes;
  }

  async resizeVolume(name: string, size: string) {
    return (await this.#json(VolumeResponse, 'POST', `/v1/apps/${enc(name)}/volume/resize`, { size })).volume;
  }

  restoreVolume(name: string, node: string, backup?: string) {
    return this.#json(VolumeRestoreResponse, 'POST', `/v1/apps/${enc(name)}/volume/restore`, { node, ...(backup ? { backup } : {}) });
  }

  moveVolume(name: string, to: string) {
    return this.#json(VolumeMoveResponse, 'POST', `/v1/apps/${enc(name)}/volume/move`, { to });
  }

  async removeVolume(name: string): Promise<void> {
    await this.#json(OkResponse, 'DELETE', `/v1/apps/${enc(name)}/volume`);
  }

  async deploy(name: string, source: Buffer | Readable | ImageDeployBody, opts: DeployOpts = {}) {
    const isImage = !Buffer.isBuffer(source) && typeof (source as Readable).pipe !== 'function';
    const headers: Record<string, string> = { 'content-type': isImage ? 'application/json' : 'application/gzip' };
    if (opts.env && Object.keys(opts.env).length > 0) headers['x-thaw-env'] = Buffer.from(JSON.stringify(opts.env), 'utf8').toString('base64');
    if (opts.idleTimeoutS !== undefined) headers['x-thaw-idle-timeout'] = String(opts.idleTimeoutS);
    if (opts.wakeTimeoutS !== undefined) headers['x-thaw-wake-timeout'] = String(opts.wakeTimeoutS);
    if (opts.egress) headers['x-thaw-egress'] = egressHeader(opts.egress);
    if (opts.build) headers['x-thaw-build'] = '1';
    if (opts.volume !== undefined) headers['x-thaw-volume'] = opts.volume;
    const path = `/v1/apps/${enc(name)}/deploys${opts.onProgress ? '?progress=1' : ''}`;
    const res = await this.#send('POST', path, isImage ? { json: source, headers } : { body: source as Buffer | Readable, headers });
    if (!opts.onProgress || res.statusCode !== 200) return parseResponse(DeployResultWire, res, path);
    let buf = '';
    let result: DeployResultWire | undefined;
    const handle = (line: string) => {
      if (line.trim() === '') return;
      const msg = ProgressLine.parse(JSON.parse(line));
      if ('progress' in msg) opts.onProgress!(msg.progress);
      else if ('result' in msg) result = msg.result;
      else throw errorFromBody(200, msg);
    };
    res.body.setEncoding('utf8');
    for await (const chunk of res.body as AsyncIterable<string>) {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        handle(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    }
    handle(buf);
    if (!result) throw new ThawError('INTERNAL', 'the deploy progress stream ended without a result');
    return result;
  }

  async listEnv(name: string) {
    return (await this.#json(EnvListResponse, 'GET', `/v1/apps/${enc(name)}/env`)).vars;
  }

  async setEnv(name: string, vars: Record<string, string>): Promise<void> {
    await this.#json(OkResponse, 'PUT', `/v1/apps/${enc(name)}/env`, { vars });
  }

  async unsetEnv(name: string, keys: string[]): Promise<void> {
    await this.#json(OkResponse, 'DELETE', `/v1/apps/${enc(name)}/env`, { keys });
  }

  sleep(name: string) {
    return this.#json(SleepResponse, 'POST', `/v1/apps/${enc(name)}/sleep`);
  }

  async wake(name: string) {
    return (await this.#json(WakeResponse, 'POST', `/v1/apps/${enc(name)}/wake`)).wake;
  }

  async sleeps(name: string, limit?: number) {
    return (await this.#json(SleepsResponse, 'GET', `/v1/apps/${enc(name)}/sleeps${limit !== undefined ? `?limit=${limit}` : ''}`)).sleeps;
  }

  async wakes(name: string, limit?: number) {
    return (await this.#json(WakesResponse, 'GET', `/v1/apps/${enc(name)}/wakes${limit !== undefined ? `?limit=${limit}` : ''}`)).wakes;
  }

  async seeds() {
    return (await this.#json(SeedsResponse, 'GET', '/v1/seeds')).seeds;
  }

  async nodes() {
    return (await this.#json(NodesResponse, 'GET', '/v1/nodes')).nodes;
  }

  async dashboardLogin() {
    const r = await this.#json(DashboardLoginResponse, 'POST', '/v1/dashboard/login');
    return { url: `${this.url}${r.login_path}`, expires_at: r.expires_at };
  }

  async logs(name: string, opts: { follow?: boolean; signal?: AbortSignal } = {}): Promise<AsyncIterable<string>> {
    const path = `/v1/apps/${enc(name)}/logs${opts.follow ? '?follow=1' : ''}`;
    const res = await this.#send('GET', path, opts.signal ? { signal: opts.signal } : {});
    if (res.statusCode !== 200) throw errorFromBody(res.statusCode, await res.body.json().catch(() => null));
    res.body.setEncoding('utf8');
    const signal = opts.signal;
    return (async function* () {
      try {
        for await (const chunk of res.body as AsyncIterable<string>) yield chunk;
      } catch (err) {
        if (!signal?.aborted) throw err; // an abort is the normal end of `logs -f`
      }
    })();
  }
}

const enc = (s: string) => encodeURIComponent(s);

async function parseResponse<S extends z.ZodType>(schema: S, res: Res, path: string): Promise<z.output<S>> {
  const text = await res.body.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ThawError('INTERNAL', `control API answered ${path} with HTTP ${res.statusCode} and a non-JSON body`, { details: { status: res.statusCode } });
  }
  if (res.statusCode >= 400) throw errorFromBody(res.statusCode, json);
  const r = schema.safeParse(json);
  if (!r.success) throw new ThawError('INTERNAL', `control API response for ${path} does not match its schema`, { details: { issues: r.error.issues.map((i) => ({ path: i.path.map(String), message: i.message })) } });
  return r.data;
}
