// Test helpers for the router's unit tests: a fake control plane (AppDirectory),
// a real upstream HTTP/WebSocket server, and a small HTTP client.
import type { TestContext } from 'node:test';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { WebSocketServer } from 'ws';
import { createRouter } from './router.ts';
import type { Address, AppDirectory, RouterOptions, WakeResult } from './types.ts';

export function deferred<T = void>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

export const sleepMs = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function until(cond: () => boolean, what: string, ms = 4000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleepMs(10);
  }
}

export interface FakeApp { address: Address | null; upstream: Address; idleTimeoutS: number; wakeTimeoutS?: number }

/** Stands in for the control plane; wake/sleep can be gated by the test. */
export class FakeDir implements AppDirectory {
  apps = new Map<string, FakeApp>();
  wakeCalls = 0;
  sleepCalls = 0;
  wakeGate: Promise<void> | null = null;
  wakeError: unknown = null;
  sleepGate: Promise<void> | null = null;
  firstBytes: { name: string; wakeId: string; ms: number }[] = [];

  add(name: string, upstream: Address, awake: boolean, idleTimeoutS = 300): void {
    this.apps.set(name, { address: awake ? upstream : null, upstream, idleTimeoutS });
  }
  lookup(name: string) {
    const a = this.apps.get(name);
    return a ? { address: a.address, idleTimeoutS: a.idleTimeoutS, ...(a.wakeTimeoutS !== undefined ? { wakeTimeoutS: a.wakeTimeoutS } : {}) } : null;
  }
  async wake(name: string): Promise<WakeResult> {
    this.wakeCalls++;
    if (this.wakeGate) await this.wakeGate;
    if (this.wakeError) throw this.wakeError;
    const a = this.apps.get(name)!;
    a.address = a.upstream;
    return { address: a.upstream, bootMode: 'snapshot', wallMs: 123.4, wakeId: 'w-1' };
  }
  async firstByte(name: string, wakeId: string, ms: number): Promise<void> {
    this.firstBytes.push({ name, wakeId, ms });
  }
  async sleep(name: string): Promise<void> {
    this.sleepCalls++;
    if (this.sleepGate) await this.sleepGate;
    this.apps.get(name)!.address = null;
  }
}

/** A real upstream app: JSON hello on /, body echo on /echo, answer after the whole body on /sink, 1.5 s on /slow, ws echo. */
export async function upstream(t: TestContext, name: string): Promise<Address & { hits: () => number }> {
  let hits = 0;
  const server = http.createServer((req, res) => {
    hits++;
    if (req.url === '/slow') return void setTimeout(() => res.end('slow done'), 1500);
    if (req.url === '/sink') {
      req.resume();
      return void req.on('end', () => res.end('got it'));
    }
    if (req.url === '/echo') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      return void req.pipe(res);
    }
    res.writeHead(200, { 'content-type': 'application/json', connection: 'x-secret', 'x-secret': '1' });
    res.end(JSON.stringify({ app: name, url: req.url, headers: req.headers }));
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (m, binary) => ws.send(m, { binary })));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(async () => {
    for (const c of wss.clients) c.terminate();
    await new Promise((r) => wss.close(r));
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  return { host: '127.0.0.1', port: (server.address() as AddressInfo).port, hits: () => hits };
}

export async function setup(t: TestContext, opts: Partial<RouterOptions> = {}) {
  const dir = new FakeDir();
  const router = createRouter({ dir, ...opts });
  const port = await router.listen(0, '127.0.0.1');
  t.after(() => router.close());
  return { dir, router, port };
}

export interface Res { status: number; headers: http.IncomingHttpHeaders; body: Buffer; json: () => any }

export function call(port: number, host: string, path = '/', opts: { method?: string; body?: Readable } = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: { host }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode!, headers: res.headers, body, json: () => JSON.parse(body.toString()) });
      });
    });
    req.on('error', reject);
    if (opts.body) opts.body.pipe(req);
    else req.end();
  });
}


/** One raw HTTP/1.1 exchange on a socket: write `text`, read one response (Content-Length framed, or to EOF). */
export class RawClient {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  closed = false;
  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
    socket.on('error', () => {});
  }

  static async open(t: TestContext, port: number): Promise<RawClient> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise((res, rej) => (socket.once('connect', res), socket.once('error', rej)));
    t.after(() => socket.destroy());
    return new RawClient(socket);
  }

  write(text: string | Buffer): void {
    this.socket.write(text);
  }

  /** The next response: status, lower-cased headers, body. Rejects after `ms`. */
  async response(ms = 4000): Promise<{ status: number; headers: Record<string, string>; body: string }> {
    const deadline = Date.now() + ms;
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end !== -1) {
        const lines = this.buf.subarray(0, end).toString('latin1').split('\r\n');
        const status = Number(lines[0]!.split(' ')[1]);
        const headers: Record<string, string> = {};
        for (const l of lines.slice(1)) {
          const i = l.indexOf(':');
          headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
        }
        const len = headers['content-length'];
        const have = this.buf.length - end - 4;
        if (len !== undefined && have >= Number(len)) {
          const body = this.buf.subarray(end + 4, end + 4 + Number(len)).toString();
          this.buf = this.buf.subarray(end + 4 + Number(len));
          return { status, headers, body };
        }
        if (len === undefined && /chunked/i.test(headers['transfer-encoding'] ?? '')) {
          const body = dechunk(this.buf.subarray(end + 4));
          if (body !== null) {
            this.buf = this.buf.subarray(end + 4 + body.used);
            return { status, headers, body: body.text };
          }
        }
        if (len === undefined && this.closed) {
          const body = this.buf.subarray(end + 4).toString();
          this.buf = Buffer.alloc(0);
          return { status, headers, body };
        }
      }
      if (this.closed) throw new Error(`connection closed; got ${JSON.stringify(this.buf.toString('latin1'))}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no response within ${ms} ms; got ${JSON.stringify(this.buf.toString('latin1'))}`);
      await new Promise<void>((res) => {
        const timer = setTimeout(res, left);
        this.waiter = () => {
          clearTimeout(timer);
          this.waiter = null;
          res();
        };
      });
    }
  }

  /** Resolves true when the server closes the connection within `ms`. */
  async closedWithin(ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (!this.closed && Date.now() < end) await sleepMs(20);
    return this.closed;
  }
}

/** A complete chunked body at the start of `b` (text and bytes used), or null if incomplete. */
function dechunk(b: Buffer): { text: string; used: number } | null {
  let at = 0;
  const parts: Buffer[] = [];
  for (;;) {
    const nl = b.indexOf('\r\n', at);
    if (nl === -1) return null;
    const size = parseInt(b.subarray(at, nl).toString('latin1'), 16);
    if (b.length < nl + 2 + size + 2) return null;
    if (size === 0) {
      const endT = b.indexOf('\r\n\r\n', nl);
      return endT === -1 ? null : { text: Buffer.concat(parts).toString(), used: endT + 4 };
    }
    parts.push(b.subarray(nl + 2, nl + 2 + size));
    at = nl + 2 + size + 2;
  }
}
