// One in-process `thaw up` for VM tests: free ports, a fresh data folder, an
// API client, a router client that sets the Host header, and a stop() that
// checks no QEMU outlives it. Each VM test file used to carry its own copy.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { request } from 'undici';
import { ApiClient } from '../../src/api/client.ts';
import type { AppWire } from '../../src/api/schemas.ts';
import { startThaw, type Running, type UpOptions } from '../../src/control/up.ts';
import { qemuProcesses } from '../vm/fixture.ts';

/** An answer read whole: status, headers (lower-case names), body text. */
export interface RouterAnswer {
  status: number;
  headers: { get(name: string): string | null };
  /** `x-thaw-boot`: cold | snapshot, or undefined when the router did not wake anything. */
  boot: string | undefined;
  text: string;
  json<T = Record<string, unknown>>(): T;
}

export interface RouterRequest {
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path?: string;
  body?: string;
  headers?: Record<string, string>;
}

export interface TestThaw {
  /** The data folder (removed by stop() unless it was passed in). */
  data: string;
  thaw: Running;
  api: ApiClient;
  routerPort: number;
  /** A request to APP through the router (a held wake counts: up to 15 min for the headers); `app` is a name (`hello`) or a full Host (`x.example`). */
  get(app: string, init?: RouterRequest): Promise<RouterAnswer>;
  /** Polls the API until NAME is in STATE; fails the test after `ms` (default 180 s: a cold boot under TCG on a busy host). */
  waitState(name: string, state: AppWire['state'], ms?: number): Promise<AppWire>;
  /** Stops Thaw and the client, asserts no QEMU of this data folder is left, removes the folder if this helper made it. */
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Start Thaw in-process on free ports (router and API on 127.0.0.1, domain
 * `localhost`). `prefix` names the temporary data folder; `data` uses a given
 * folder instead (the caller removes it). `up` overrides any `thaw up` option.
 */
export async function startTestThaw(o: { prefix?: string; data?: string; up?: Partial<UpOptions> } = {}): Promise<TestThaw> {
  const data = o.data ?? (await mkdtemp(path.join(os.tmpdir(), o.prefix ?? 'thaw-vm-')));
  // A request holds up to 10 min for its wake (the product default is 60 s): a
  // cold boot under TCG on a loaded host can take longer than a minute, and a
  // 503 there would be the host's slowness, not the code under test.
  const thaw = await startThaw({ data, port: 0, apiPort: 0, domain: 'localhost', idleTimeout: 300, wakeTimeoutMs: 600_000, ...o.up }, pino({ level: 'silent' }));
  const routerPort = Number(new URL(thaw.routerUrl).port);
  const api = new ApiClient({ url: thaw.apiUrl, token: (await readFile(path.join(data, 'token'), 'utf8')).trim() });

  // undici's request, not fetch: fetch does not let a caller set the Host header.
  const get = async (app: string, init: RouterRequest = {}): Promise<RouterAnswer> => {
    const host = app.includes('.') ? app : `${app}.localhost`;
    const res = await request(`http://127.0.0.1:${routerPort}${init.path ?? '/'}`, {
      method: init.method ?? 'GET',
      body: init.body,
      headers: { ...init.headers, host },
      headersTimeout: 900_000,
    });
    const text = await res.body.text();
    const header = (k: string) => {
      const v = res.headers[k.toLowerCase()];
      return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
    };
    return { status: res.statusCode, headers: { get: header }, boot: header('x-thaw-boot') ?? undefined, text, json: <T>() => JSON.parse(text) as T };
  };

  const waitState = async (name: string, state: AppWire['state'], ms = 180_000) => {
    const t0 = Date.now();
    for (;;) {
      const a = await api.getApp(name);
      if (a.state === state) return a;
      if (Date.now() - t0 > ms) assert.fail(`${name} stayed ${a.state}, expected ${state}`);
      await sleep(200);
    }
  };

  const stop = async () => {
    await thaw.stop();
    await api.close();
    assert.deepEqual(qemuProcesses(data), [], 'shutdown leaves no QEMU running');
    if (!o.data) await rm(data, { recursive: true, force: true });
  };
  return { data, thaw, api, routerPort, get, waitState, stop };
}
