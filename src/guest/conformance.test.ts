// Conformance of the static C guest agent (guest/agent/) to the protocol in
// src/wire/agent.ts. The real binary runs on this host in its test mode
// (`thaw-agent --channel-fd 3 --root DIR --kmsg FILE`, see guest/agent/main.c):
// the channel is a UNIX socketpair (an extra stdio 'pipe'), guest paths live
// under a temporary root, the kernel log is a file the test appends records to,
// and the clock is virtual. Every answer goes through the real AgentClient
// (src/guest/channel.ts: Results[op] and GuestMessage), and a raw reader sees
// every byte the agent writes: each line must be valid UTF-8, JSON and a
// GuestMessage (so every error code is one of AGENT_ERROR_CODES), including the
// id -1 answers AgentClient ignores. Every test starts its own agent and leaves
// nothing behind: the agent, every process it started (found by a tag in their
// command lines) and the temporary folders are gone when it ends.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { appendFile, chmod, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile, stat } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { before, test, type TestContext } from 'node:test';
import { ThawError } from '../errors.ts';
import { AGENT_ERROR_CODES, GuestMessage, MAX_LINE_BYTES, PROTOCOL_VERSION, RequestEnvelope, Results, type Hello, type Op } from '../wire/agent.ts';
import { generateAgentKey, sealEnv } from '../wire/seal.ts';
import { ensureAssets } from './assets.ts';
import { AgentClient } from './channel.ts';

const T = 5000; // AgentClient request timeout: every answer here comes in milliseconds
let AGENT_BIN = '';

before(async () => {
  AGENT_BIN = (await ensureAssets()).agent;
});

// ---------------------------------------------------------------------------
// The harness: one agent per test.

type Msg = GuestMessage;
type ResultMsg = Extract<Msg, { type: 'result' }>;
type ErrMsg = Extract<ResultMsg, { ok: false }>;

interface Agent {
  child: ChildProcess;
  pid: number;
  sock: net.Socket;
  client: AgentClient;
  hello: Hello;
  /** Temporary folder (0755) holding root/, kmsg and anything else a test needs. */
  base: string;
  root: string;
  kmsg: string;
  /** Digits that every long-lived process a test starts through the agent carries in its command line. */
  tag: string;
  /** Every message the agent wrote, in order, schema-checked. */
  msgs: Msg[];
  /** Lines that were not UTF-8, JSON or a GuestMessage. */
  violations: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Raw bytes onto the channel. */
  raw(bytes: string | Buffer): Promise<void>;
  /** The first message at index >= from matching pred. */
  waitFor(pred: (m: Msg) => boolean, from?: number, timeoutMs?: number): Promise<{ msg: Msg; index: number }>;
  stderr(): string;
}

let rawIds = 1_000_000; // raw requests; AgentClient numbers its own from 1
const nextId = () => rawIds++;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Gone, or a zombie nobody reaped yet (its parent, the agent, is gone). */
function isGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function waitGone(pid: number, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (isGone(pid)) return true;
    await sleep(10);
  }
  return isGone(pid);
}

/** Live processes whose command line contains `tag`. */
function tagged(tag: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(tag) && !isGone(Number(e))) out.push(Number(e));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

async function startAgent(t: TestContext, opts: { kmsgBefore?: string } = {}): Promise<Agent> {
  const base = await mkdtemp(path.join(os.tmpdir(), 'thaw-conformance-'));
  await chmod(base, 0o755);
  const root = path.join(base, 'root');
  // The layout of a guest root (src/guest/assets.ts buildRootfs, init.c platform_mounts).
  for (const d of ['tmp', 'run/thaw', 'var/lib/thaw']) await mkdir(path.join(root, d), { recursive: true });
  const kmsg = path.join(base, 'kmsg');
  await writeFile(kmsg, opts.kmsgBefore ?? '6,1,1000,-;Linux version 6.1.0 (test)\n');
  const tag = String(randomInt(100_000_000, 999_999_999));

  const child = spawn(AGENT_BIN, ['--channel-fd', '3', '--root', root, '--kmsg', kmsg], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let errText = '';
  child.stdout!.on('data', (d: Buffer) => (errText += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (errText += d.toString()));
  const sock = child.stdio[3] as net.Socket;
  sock.on('error', () => {});

  const msgs: Msg[] = [];
  const violations: string[] = [];
  const waiters = new Set<() => void>();
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  // A tee: the raw reader sees the bytes first, then AgentClient gets the very same bytes.
  const tee = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      sock.write(chunk, cb);
    },
    destroy(err, cb) {
      sock.destroy();
      cb(err);
    },
  });
  let pending = Buffer.alloc(0);
  sock.on('data', (b: Buffer) => {
    pending = Buffer.concat([pending, b]);
    let nl: number;
    while ((nl = pending.indexOf(0x0a)) >= 0) {
      const line = pending.subarray(0, nl);
      pending = pending.subarray(nl + 1);
      let text: string;
      try {
        text = utf8.decode(line);
      } catch {
        violations.push(`not UTF-8: ${line.toString('hex').slice(0, 200)}`);
        continue;
      }
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        violations.push(`not JSON: ${text.slice(0, 200)}`);
        continue;
      }
      const parsed = GuestMessage.safeParse(json);
      if (!parsed.success) {
        violations.push(`not a GuestMessage: ${text.slice(0, 300)}: ${parsed.error.message.slice(0, 300)}`);
        continue;
      }
      msgs.push(parsed.data);
    }
    for (const w of [...waiters]) w();
    if (!tee.destroyed) tee.push(b);
  });
  sock.on('close', () => {
    for (const w of [...waiters]) w();
    if (!tee.destroyed) tee.destroy();
  });
  const client = new AgentClient(tee);

  const a: Agent = {
    child,
    pid: child.pid!,
    sock,
    client,
    hello: undefined as unknown as Hello,
    base,
    root,
    kmsg,
    tag,
    msgs,
    violations,
    exited,
    raw: (bytes) => new Promise<void>((resolve, reject) => sock.write(bytes, (e) => (e ? reject(e) : resolve()))),
    waitFor(pred, from = 0, timeoutMs = T) {
      return new Promise((resolve, reject) => {
        let i = from;
        const check = () => {
          if (violations.length) return done(new Error(`agent wrote a bad line: ${violations[0]}`));
          for (; i < msgs.length; i++) if (pred(msgs[i]!)) return done(null, { msg: msgs[i]!, index: i });
          if (sock.destroyed) return done(new Error(`channel closed while waiting; agent said: ${errText.slice(-500)}`));
        };
        const timer = setTimeout(() => done(new Error(`no matching message within ${timeoutMs} ms; last: ${JSON.stringify(msgs.slice(-3))}`)), timeoutMs);
        function done(err: Error | null, v?: { msg: Msg; index: number }) {
          clearTimeout(timer);
          waiters.delete(check);
          if (err) reject(err);
          else resolve(v!);
        }
        waiters.add(check);
        check();
      });
    },
    stderr: () => errText,
  };

  t.after(async () => {
    // The agent ends on SIGTERM (test mode) and takes what it started with it.
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const res = await Promise.race([exited, sleep(3000).then(() => null)]);
    if (!res) {
      child.kill('SIGKILL');
      await exited;
    }
    client.close();
    sock.destroy();
    let strays = tagged(tag);
    for (let i = 0; i < 100 && strays.length; i++) {
      await sleep(20);
      strays = tagged(tag);
    }
    const descr = strays.map((p) => `${p}: ${readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ').slice(0, 120)}`);
    for (const p of strays) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await rm(base, { recursive: true, force: true });
    assert.deepEqual(descr, [], 'no process the agent started may outlive it');
    assert.deepEqual(violations, [], 'every line the agent wrote is a GuestMessage');
    assert.ok(!existsSync(base));
  });

  a.hello = await client.ready(T);
  const first = await a.waitFor(() => true);
  assert.equal(first.index, 0);
  assert.equal(first.msg.type, 'hello', 'the first thing the agent says is hello');
  return a;
}

/** Send one raw line (object or text) and wait for the result with `id`. */
async function rawReq(a: Agent, line: object | string, id: number): Promise<ResultMsg> {
  const from = a.msgs.length;
  const text = typeof line === 'string' ? line : JSON.stringify(line);
  await a.raw(`${text}\n`);
  const { msg } = await a.waitFor((m) => m.type === 'result' && m.id === id, from);
  return msg as ResultMsg;
}

/** The agent answers a ping (through AgentClient: Results.ping) and is still running. */
async function alive(a: Agent): Promise<Hello> {
  const h = await a.client.request({ op: 'ping' }, T);
  assert.equal(a.child.exitCode, null);
  assert.equal(h.agent_pid, a.pid);
  return h;
}

/**
 * Send `line` (a hostile line, newline added) and a ping right behind it: between
 * them the agent must write exactly one answer, AGENT_PROTOCOL with `expectId`;
 * then it answers the ping.
 */
async function probe(a: Agent, line: string | Buffer, expectId: number, what: string): Promise<ErrMsg> {
  const from = a.msgs.length;
  const pingId = nextId();
  await a.raw(Buffer.concat([Buffer.from(line), Buffer.from(`\n${JSON.stringify({ id: pingId, op: 'ping' })}\n`)]));
  const { index, msg } = await a.waitFor((m) => m.type === 'result' && m.id === pingId, from);
  const between = a.msgs.slice(from, index);
  assert.equal(between.length, 1, `${what}: exactly one answer (got ${JSON.stringify(between)})`);
  const ans = between[0]!;
  assert.ok(ans.type === 'result' && !ans.ok, `${what}: an error answer (got ${JSON.stringify(ans)})`);
  assert.equal(ans.error.code, 'AGENT_PROTOCOL', `${what}: ${JSON.stringify(ans)}`);
  assert.equal(ans.id, expectId, `${what}: answered with id ${expectId} (got ${JSON.stringify(ans)})`);
  assert.ok(msg.type === 'result' && msg.ok, `${what}: then the ping is answered`);
  Results.ping.parse(msg.data);
  return ans;
}

async function rejectsWith(p: Promise<unknown>, code: (typeof AGENT_ERROR_CODES)[number], re?: RegExp): Promise<ThawError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ThawError, `expected ${code}, got ${err === undefined ? 'success' : String(err)}`);
  assert.equal(err.code, code, err.message);
  if (re) assert.match(err.message, re);
  return err;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function httpGet(port: number, p = '/'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

// ---------------------------------------------------------------------------
// The app: one node script, its behaviour picked by argv.

const APP = `
const http = require('http');
const cp = require('child_process');
const [mode, marker, sleepArg] = process.argv.slice(1);
console.log('app up ' + marker + ' greeting=' + process.env.GREETING);
console.error('app stderr pid=' + process.pid);
if (mode === 'exit') {
  console.log('bye before listening');
  process.exit(3);
} else if (mode === 'never') {
  setInterval(() => {}, 1000);
} else {
  if (mode === 'flood') process.stdout.write(Array.from({ length: 40000 }, (_, i) => 'line ' + i + ' ✓\\n').join(''));
  if (mode === 'ignore-term') process.on('SIGTERM', () => console.log('got SIGTERM, ignoring it'));
  const grandchild = mode === 'grandchild' ? cp.spawn('sleep', [sleepArg], { stdio: 'ignore' }).pid : null;
  http.createServer((req, res) => {
    if (req.url === '/exit') { res.end('bye'); setTimeout(() => process.exit(5), 20); return; }
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ pid: process.pid, ppid: process.ppid, cwd: process.cwd(), argv: process.argv.slice(1), env: process.env,
      uid: process.getuid(), gid: process.getgid(), euid: process.geteuid(), egid: process.getegid(), grandchild }));
  }).listen(Number(process.env.PORT), '127.0.0.1', () => console.log('listening on ' + process.env.PORT));
}
`;

type Mode = 'serve' | 'exit' | 'never' | 'ignore-term' | 'grandchild' | 'flood';

function appArgv(a: Agent, mode: Mode, argv0 = process.execPath): string[] {
  return [argv0, '-e', APP, mode, `marker-${a.tag}`, `120.${a.tag}`];
}

interface AppOpts {
  mode?: Mode;
  argv?: string[];
  cwd?: string;
  uid?: number;
  gid?: number;
  env?: Record<string, string>;
  port?: number;
  listen_timeout_ms?: number;
  pubkey?: string;
}

async function startRequest(a: Agent, o: AppOpts = {}) {
  const port = o.port ?? (await freePort());
  const env = o.env ?? { PORT: String(port), PATH: '/usr/local/bin:/usr/bin:/bin', GREETING: `hi-${a.tag}` };
  const req = {
    op: 'start_app' as const,
    argv: o.argv ?? appArgv(a, o.mode ?? 'serve'),
    cwd: o.cwd ?? '/',
    uid: o.uid ?? 0,
    gid: o.gid ?? 0,
    env: sealEnv(env, o.pubkey ?? a.hello.pubkey),
    port,
    listen_timeout_ms: o.listen_timeout_ms ?? 10_000,
  };
  return { req, port, env };
}

async function startApp(a: Agent, o: AppOpts = {}) {
  const { req, port, env } = await startRequest(a, o);
  const r = await a.client.request(req, o.listen_timeout_ms ?? 10_000 + T);
  return { ...r, port, env };
}

/** The app's log, once it matches `re` (the app may write after the agent saw it listen). */
async function logsMatching(a: Agent, re: RegExp, max_bytes = 1 << 20): Promise<string> {
  const end = Date.now() + T;
  for (;;) {
    const { text } = await a.client.request({ op: 'logs', max_bytes }, T);
    if (re.test(text) || Date.now() > end) return text;
    await sleep(10);
  }
}

/** No process runs the app script with this agent's tag, and the agent says it has no app. */
async function noApp(a: Agent): Promise<void> {
  await sleep(100);
  assert.deepEqual(tagged(a.tag), [], 'no app process was started');
  assert.equal((await alive(a)).app_pid, null);
}

function status(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const i = l.indexOf(':');
    if (i > 0) out[l.slice(0, i)] = l.slice(i + 1).trim();
  }
  return out;
}

// ---------------------------------------------------------------------------
// hello, ping

test('hello on connect: protocol version, a 32-byte X25519 key, the clock; ping answers a hello', async (t) => {
  const a = await startAgent(t);
  const h = a.hello;
  assert.equal(h.version, PROTOCOL_VERSION);
  assert.equal(h.agent_pid, a.pid);
  const key = Buffer.from(h.pubkey, 'base64');
  assert.equal(key.length, 32);
  assert.equal(key.toString('base64'), h.pubkey, 'canonical base64');
  assert.equal(h.app_pid, null);
  assert.ok(h.uptime_ms >= 0 && h.uptime_ms < 5000, `uptime_ms ${h.uptime_ms}`);
  assert.ok(Math.abs(h.clock_us - Date.now() * 1000) < 5e6, 'clock_us is the realtime clock in microseconds');
  assert.equal(h.boot_id, readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
  const p = await alive(a);
  assert.equal(p.pubkey, h.pubkey, 'same key for the life of the process');
  assert.ok(p.clock_us >= h.clock_us);
  const b = await startAgent(t);
  assert.notEqual(b.hello.pubkey, h.pubkey, 'every agent process has its own key');
});

// ---------------------------------------------------------------------------
// start_app

test('start_app: the app gets exactly the sealed env, its argv and cwd; ps, hello and logs see it; its fds do not include the channel', async (t) => {
  const a = await startAgent(t);
  const cwd = path.join(a.base, 'work dir');
  await mkdir(cwd);
  const port = await freePort();
  const env = {
    PORT: String(port),
    PATH: `${path.dirname(process.execPath)}:/usr/bin:/bin`,
    GREETING: `hi-${a.tag}`,
    SECRET: 'sé cret ✓ = with = equals',
    MULTI: 'line 1\nline 2',
    EMPTY: '',
  };
  // argv[0] is a name looked up in the PATH of the app's own env.
  const r = await startApp(a, { argv: appArgv(a, 'serve', 'node'), cwd, env, port });
  assert.ok(r.listen_ms >= 0);
  const info = JSON.parse((await httpGet(port)).body) as { pid: number; ppid: number; cwd: string; argv: string[]; env: Record<string, string>; uid: number };
  assert.equal(info.pid, r.pid);
  assert.equal(info.ppid, a.pid, 'the agent is the parent');
  assert.deepEqual(info.env, env, 'the complete environment is what the host sealed, nothing else');
  assert.deepEqual(info.argv, ['serve', `marker-${a.tag}`, `120.${a.tag}`]);
  assert.equal(info.cwd, cwd);
  assert.equal(info.uid, 0);
  // Its own session and process group.
  const stat = readFileSync(`/proc/${r.pid}/stat`, 'utf8');
  const [, , pgrp, sid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  assert.equal(Number(pgrp), r.pid);
  assert.equal(Number(sid), r.pid);
  // The channel socket is the agent's alone.
  const chan = readlinkSync(`/proc/${a.pid}/fd/3`);
  assert.match(chan, /^socket:/);
  const appFds = readdirSync(`/proc/${r.pid}/fd`).map((fd) => {
    try {
      return readlinkSync(`/proc/${r.pid}/fd/${fd}`);
    } catch {
      return '';
    }
  });
  assert.ok(!appFds.includes(chan), `the app must not inherit the agent's channel (${chan}): ${appFds.join(' ')}`);

  assert.equal((await alive(a)).app_pid, r.pid);
  const ps = await a.client.request({ op: 'ps' }, T);
  const me = ps.processes.find((p) => p.pid === r.pid);
  assert.ok(me, 'ps lists the app');
  assert.equal(me.ppid, a.pid);
  assert.equal(me.comm, readFileSync(`/proc/${r.pid}/comm`, 'utf8').trim());
  const logs = { text: await logsMatching(a, /listening on/) };
  assert.match(logs.text, new RegExp(`app up marker-${a.tag} greeting=hi-${a.tag}`));
  assert.match(logs.text, new RegExp(`app stderr pid=${r.pid}`), 'stderr is captured too');
  assert.match(logs.text, new RegExp(`listening on ${port}`));

  const stop = await a.client.request({ op: 'stop_app', timeout_ms: 3000 }, T);
  assert.deepEqual(stop, { pid: r.pid, code: null, signal: 'SIGTERM' });
  assert.ok(await waitGone(r.pid));
});

test('start_app as uid/gid 65534: real, effective and saved ids and no supplementary groups', { skip: process.getuid?.() !== 0 && 'needs root' }, async (t) => {
  const a = await startAgent(t);
  const cwd = path.join(a.base, 'nobody');
  await mkdir(cwd);
  await chmod(cwd, 0o755);
  const r = await startApp(a, { uid: 65534, gid: 65534, cwd });
  const st = status(r.pid);
  assert.match(st.Uid!, /^65534\s+65534\s+65534\s+65534$/);
  assert.match(st.Gid!, /^65534\s+65534\s+65534\s+65534$/);
  assert.equal(st.Groups, '');
  const info = JSON.parse((await httpGet(r.port)).body) as { euid: number; egid: number; cwd: string };
  assert.equal(info.euid, 65534);
  assert.equal(info.egid, 65534);
  assert.equal(info.cwd, cwd);
  await a.client.request({ op: 'stop_app', timeout_ms: 3000 }, T);
  assert.ok(await waitGone(r.pid));
});

test('start_app refuses an env it cannot open (AGENT_PROTOCOL) and starts nothing', async (t) => {
  const a = await startAgent(t);
  // Sealed to another agent's key.
  await rejectsWith(startApp(a, { pubkey: generateAgentKey().publicB64 }), 'AGENT_PROTOCOL', /does not open/);
  await noApp(a);
  // Tampered with: one bit of the ciphertext, the tag.
  for (const field of ['ct', 'tag'] as const) {
    const { req } = await startRequest(a);
    const b = Buffer.from(req.env[field], 'base64');
    b[0]! ^= 1;
    req.env[field] = b.toString('base64');
    await rejectsWith(a.client.request(req, T), 'AGENT_PROTOCOL', /does not open/);
  }
  // Wrong sizes of epk, nonce and tag.
  for (const [field, bytes] of [['epk', 31], ['nonce', 24], ['tag', 15]] as const) {
    const { req } = await startRequest(a);
    req.env[field] = randomBytes(bytes).toString('base64');
    await rejectsWith(a.client.request(req, T), 'AGENT_PROTOCOL', new RegExp(`env.${field}`));
  }
  // Plaintexts that are not a complete environment.
  for (const plain of [{ 'A=B': 'x' }, { '': 'x' }, { A: 1 }, { A: 'x\u0000y' }, ['A']] as unknown as Record<string, string>[]) {
    await rejectsWith(startApp(a, { env: plain }), 'AGENT_PROTOCOL', /env/);
  }
  await noApp(a);
});

test('start_app: a missing program or working folder is APP_CRASHED at once', async (t) => {
  const a = await startAgent(t);
  await rejectsWith(startApp(a, { argv: [path.join(a.base, 'no-such-program'), a.tag] }), 'APP_CRASHED', /exec .*no-such-program.*No such file/);
  await rejectsWith(startApp(a, { argv: [`no-such-program-${a.tag}`] }), 'APP_CRASHED', /exec/);
  await rejectsWith(startApp(a, { argv: [path.join(a.root, 'tmp')] }), 'APP_CRASHED', /exec .*Permission denied/);
  await rejectsWith(startApp(a, { cwd: path.join(a.base, 'no-such-dir') }), 'APP_CRASHED', /chdir/);
  await noApp(a);
});

test('start_app: an app that exits before listening is APP_CRASHED with its output, then app_exit', async (t) => {
  const a = await startAgent(t);
  const from = a.msgs.length;
  const err = await rejectsWith(startApp(a, { mode: 'exit' }), 'APP_CRASHED', /exited before listening/);
  assert.match(err.message, /bye before listening/);
  assert.match(err.message, new RegExp(`app up marker-${a.tag}`));
  const { msg } = await a.waitFor((m) => m.type === 'app_exit', from);
  assert.ok(msg.type === 'app_exit');
  assert.equal(msg.code, 3);
  assert.equal(msg.signal, null);
  assert.match(msg.log_tail, /bye before listening/);
  assert.ok(isGone(msg.pid));
  await noApp(a);
});

test('start_app: an app that never listens is APP_START_TIMEOUT; it keeps running until stop_app', async (t) => {
  const a = await startAgent(t);
  const t0 = Date.now();
  const { req } = await startRequest(a, { mode: 'never', listen_timeout_ms: 300 });
  const err = await rejectsWith(a.client.request(req, T), 'APP_START_TIMEOUT', new RegExp(`did not listen on ${req.port} within 300 ms`));
  assert.match(err.message, new RegExp(`app up marker-${a.tag}`), 'with the output so far');
  const ms = Date.now() - t0;
  assert.ok(ms >= 280 && ms < 3000, `answered after ${ms} ms`);
  const h = await alive(a);
  assert.ok(h.app_pid);
  await rejectsWith(startApp(a), 'AGENT_ERROR', /already running/);
  const stop = await a.client.request({ op: 'stop_app', timeout_ms: 2000 }, T);
  assert.equal(stop.pid, h.app_pid);
  assert.equal(stop.signal, 'SIGTERM');
  assert.ok(await waitGone(h.app_pid));
});

test('start_app while an app runs is AGENT_ERROR, and the running app is untouched', async (t) => {
  const a = await startAgent(t);
  const r = await startApp(a);
  await rejectsWith(startApp(a), 'AGENT_ERROR', new RegExp(`already running \\(pid ${r.pid}\\)`));
  assert.equal(JSON.parse((await httpGet(r.port)).body).pid, r.pid);
  assert.equal((await alive(a)).app_pid, r.pid);
  assert.equal(tagged(a.tag).length, 1, 'one app process');
});

// ---------------------------------------------------------------------------
// app_exit, logs, stop_app

test('app_exit when the app is killed: SIGKILL, its log tail; its process group dies with it', async (t) => {
  const a = await startAgent(t);
  const r = await startApp(a, { mode: 'grandchild' });
  const { grandchild } = JSON.parse((await httpGet(r.port)).body) as { grandchild: number };
  assert.ok(grandchild > 0 && !isGone(grandchild));
  const from = a.msgs.length;
  const exitP = new Promise((resolve) => a.client.once('app_exit', resolve));
  process.kill(r.pid, 'SIGKILL');
  const { msg } = await a.waitFor((m) => m.type === 'app_exit', from);
  assert.ok(msg.type === 'app_exit');
  assert.deepEqual({ pid: msg.pid, code: msg.code, signal: msg.signal }, { pid: r.pid, code: null, signal: 'SIGKILL' });
  assert.match(msg.log_tail, new RegExp(`listening on ${r.port}`));
  assert.deepEqual(await exitP, msg, 'AgentClient emits it');
  assert.ok(await waitGone(grandchild), 'the rest of the process group is killed');
  assert.equal((await alive(a)).app_pid, null);
  // Stopping after the fact: nothing to stop.
  assert.deepEqual(await a.client.request({ op: 'stop_app', timeout_ms: 100 }, T), { pid: null, code: null, signal: null });
  // And a new app can start.
  const r2 = await startApp(a);
  assert.notEqual(r2.pid, r.pid);
});

test('app_exit with the exit code of an app that exits by itself', async (t) => {
  const a = await startAgent(t);
  const r = await startApp(a);
  const from = a.msgs.length;
  assert.equal((await httpGet(r.port, '/exit')).body, 'bye');
  const { msg } = await a.waitFor((m) => m.type === 'app_exit', from);
  assert.ok(msg.type === 'app_exit');
  assert.deepEqual({ pid: msg.pid, code: msg.code, signal: msg.signal }, { pid: r.pid, code: 5, signal: null });
  assert.equal((await alive(a)).app_pid, null);
});

test('logs: the tail of the app output, at most max_bytes, kept after the app exits', async (t) => {
  const a = await startAgent(t);
  assert.equal((await a.client.request({ op: 'logs', max_bytes: 100 }, T)).text, '', 'no app yet: empty');
  const r = await startApp(a);
  const full = await logsMatching(a, new RegExp(`listening on ${r.port}\n$`));
  assert.ok(full.startsWith(`app up marker-${a.tag}`), full);
  for (const max of [1, 10, 25]) {
    const { text } = await a.client.request({ op: 'logs', max_bytes: max }, T);
    assert.equal(text, full.slice(-max), `max_bytes ${max}`);
  }
  assert.equal((await a.client.request({ op: 'logs', max_bytes: 2 ** 53 - 1 }, T)).text, full);
  process.kill(r.pid, 'SIGKILL');
  await a.waitFor((m) => m.type === 'app_exit');
  assert.equal((await a.client.request({ op: 'logs', max_bytes: 1 << 20 }, T)).text, full, 'kept after the app exits');

  // More output than the ring holds (256 KiB), with 3-byte characters: the newest bytes,
  // never more than max_bytes, never starting inside a character.
  await a.client.request({ op: 'scrub', canary_b64: 'AAAA' }, T);
  const r2 = await startApp(a, { mode: 'flood' });
  const tail = await logsMatching(a, new RegExp(`listening on ${r2.port}\n$`));
  const bytes = Buffer.byteLength(tail);
  assert.ok(bytes <= 256 * 1024 && bytes > 256 * 1024 - 3, `${bytes} bytes`);
  assert.ok(tail.endsWith(`line 39999 ✓\nlistening on ${r2.port}\n`));
  assert.ok(!tail.includes('\ufffd'));
  const lines = tail.split('\n').slice(1, -2);
  lines.forEach((l, i) => assert.equal(l, `line ${40000 - lines.length + i} ✓`));
  for (const max of [1, 2, 3, 4, 5, 1000, 4097]) {
    const { text } = await a.client.request({ op: 'logs', max_bytes: max }, T);
    assert.ok(Buffer.byteLength(text) <= max && Buffer.byteLength(text) > max - 3, `max_bytes ${max}: ${JSON.stringify(text)}`);
    assert.ok(tail.endsWith(text) && !text.includes('\ufffd'), `max_bytes ${max}`);
  }
});

test('stop_app: SIGTERM first; SIGKILL after timeout_ms for an app that ignores SIGTERM; no app: nulls', async (t) => {
  const a = await startAgent(t);
  assert.deepEqual(await a.client.request({ op: 'stop_app', timeout_ms: 1000 }, T), { pid: null, code: null, signal: null });
  const r = await startApp(a, { mode: 'ignore-term' });
  const t0 = Date.now();
  const from = a.msgs.length;
  const stop = await a.client.request({ op: 'stop_app', timeout_ms: 400 }, T);
  const ms = Date.now() - t0;
  assert.deepEqual(stop, { pid: r.pid, code: null, signal: 'SIGKILL' });
  assert.ok(ms >= 380 && ms < 3000, `killed after ${ms} ms`);
  const { msg } = await a.waitFor((m) => m.type === 'app_exit', from);
  assert.ok(msg.type === 'app_exit');
  assert.match(msg.log_tail, /got SIGTERM, ignoring it/, 'SIGTERM came first');
  assert.ok(await waitGone(r.pid));
  // A second stop_app supersedes the first (which gets AGENT_ERROR); the second gets the result.
  const r2 = await startApp(a, { mode: 'ignore-term' });
  const first = a.client.request({ op: 'stop_app', timeout_ms: 60_000 }, T);
  await sleep(50);
  const second = a.client.request({ op: 'stop_app', timeout_ms: 100 }, T);
  await rejectsWith(first, 'AGENT_ERROR', /superseded/);
  assert.deepEqual(await second, { pid: r2.pid, code: null, signal: 'SIGKILL' });
  assert.equal((await alive(a)).app_pid, null);
});

// ---------------------------------------------------------------------------
// scrub

test('scrub: refused with an app running; writes the canary, empties /tmp and /run/thaw, forgets the log, kills strays it started (only those)', async (t) => {
  const a = await startAgent(t);
  const r = await startApp(a);
  const canary = randomBytes(4096);
  await rejectsWith(a.client.request({ op: 'scrub', canary_b64: canary.toString('base64') }, T), 'AGENT_ERROR', /stop the app/);
  assert.ok(!isGone(r.pid), 'the app is untouched');
  await a.client.request({ op: 'stop_app', timeout_ms: 2000 }, T);

  // Leftovers in /tmp (nested, a symlink pointing out, hidden files) and /run/thaw.
  const outside = path.join(a.base, 'outside.txt');
  await writeFile(outside, 'must survive');
  await mkdir(path.join(a.root, 'tmp/deep/er/est'), { recursive: true });
  await writeFile(path.join(a.root, 'tmp/deep/er/est/f'), 'x');
  await writeFile(path.join(a.root, 'tmp/.hidden'), 'x');
  await symlink(outside, path.join(a.root, 'tmp/link'));
  await writeFile(path.join(a.root, 'run/thaw/env'), 'SECRET=1');
  // A stray: a background process that outlived the exec that started it (same session).
  const ex = await a.client.request({ op: 'exec', argv: ['sh', '-c', `sleep 120.${a.tag} >/dev/null 2>&1 & echo $!`], timeout_ms: 5000 }, T);
  const stray = Number(ex.stdout.trim());
  assert.ok(stray > 0 && !isGone(stray));
  // A process this agent did not start must survive (test mode).
  const bystander = spawn('sleep', [`121.${a.tag}`], { stdio: 'ignore' });
  t.after(() => void bystander.kill('SIGKILL'));

  const s = await a.client.request({ op: 'scrub', canary_b64: canary.toString('base64') }, 30_000);
  assert.equal(s.canary_path, '/var/lib/thaw/canary');
  assert.deepEqual(await readFile(path.join(a.root, 'var/lib/thaw/canary')), canary);
  assert.deepEqual(await readdir(path.join(a.root, 'tmp')), []);
  assert.deepEqual(await readdir(path.join(a.root, 'run/thaw')), []);
  assert.equal(await readFile(outside, 'utf8'), 'must survive', 'a symlink is removed, not followed');
  assert.equal((await a.client.request({ op: 'logs', max_bytes: 1000 }, T)).text, '', 'the app log is forgotten');
  assert.ok(await waitGone(stray), 'the stray is killed');
  assert.ok(!isGone(bystander.pid!), 'a process the agent did not start is left alone');
  bystander.kill('SIGKILL');
  // Bad canaries.
  await rejectsWith(a.client.request({ op: 'scrub', canary_b64: '' }, T), 'AGENT_PROTOCOL', /canary_b64/);
  await rejectsWith(a.client.request({ op: 'scrub', canary_b64: 'QQ' }, T), 'AGENT_PROTOCOL', /canary_b64/);
  await alive(a);
});

test('scrub: GATE_FAILED when the kernel log got an EXT4-fs error after the agent started; no canary written', async (t) => {
  const a = await startAgent(t, { kmsgBefore: '3,10,100,-;EXT4-fs error (device vda): logged before the agent started\n' });
  await appendFile(a.kmsg, '6,11,200,-;virtio_net virtio1 eth0: link up\n');
  // A clean log: scrub passes.
  const canary = randomBytes(64);
  await a.client.request({ op: 'scrub', canary_b64: canary.toString('base64') }, T);
  await rm(path.join(a.root, 'var/lib/thaw/canary'));
  await appendFile(a.kmsg, '3,12,300,-;EXT4-fs error (device vda): ext4_lookup:1855: inode #2: comm sh: deleted inode referenced: 12\n');
  await rejectsWith(a.client.request({ op: 'scrub', canary_b64: canary.toString('base64') }, T), 'GATE_FAILED', /EXT4-fs error \(device vda\): ext4_lookup/);
  assert.ok(!existsSync(path.join(a.root, 'var/lib/thaw/canary')), 'no canary on a disk with errors');
  await alive(a);
});

// ---------------------------------------------------------------------------
// gate

test('gate: canary read back with the right sha256, or null; round trip over the probe block scrub allocated', async (t) => {
  const a = await startAgent(t);
  for (const size of [4096, 1, 10_000, 65536]) {
    const canary = randomBytes(size);
    await a.client.request({ op: 'scrub', canary_b64: canary.toString('base64') }, T);
    const sha = createHash('sha256').update(canary).digest('hex');
    const g = await a.client.request({ op: 'gate', canary_sha256: sha }, T);
    assert.equal(g.reason, null, `canary of ${size} bytes`);
    assert.deepEqual({ ...g, ms: 0 }, { ok: true, canary_ok: true, roundtrip_ok: true, fs_errors: [], ms: 0, reason: null });
  }
  const g = await a.client.request({ op: 'gate', canary_sha256: null }, T);
  assert.deepEqual({ ...g, ms: 0 }, { ok: true, canary_ok: null, roundtrip_ok: true, fs_errors: [], ms: 0, reason: null });
  // The probe block is allocated at scrub (so it is in the seed's disk) and rewritten by every gate.
  assert.deepEqual((await readdir(path.join(a.root, 'var/lib/thaw'))).sort(), ['canary', 'gate.probe']);
  assert.equal((await stat(path.join(a.root, 'var/lib/thaw/gate.probe'))).size, 4096);
  const r = await startApp(a);
  assert.ok(r.pid > 0, 'a passed gate lets the app start');
});

test('gate: a wrong canary fails it (ok false, reason); start_app is then refused with GATE_FAILED and never started', async (t) => {
  const a = await startAgent(t);
  const canary = randomBytes(4096);
  await a.client.request({ op: 'scrub', canary_b64: canary.toString('base64') }, T);
  const wrong = createHash('sha256').update('another disk').digest('hex');
  const g = await a.client.request({ op: 'gate', canary_sha256: wrong }, T);
  assert.equal(g.ok, false);
  assert.equal(g.canary_ok, false);
  assert.equal(g.roundtrip_ok, true);
  assert.match(g.reason ?? '', /canary/);
  await rejectsWith(startApp(a), 'GATE_FAILED', /canary/);
  await noApp(a);
  // Remembered on tmpfs for the agents that follow in this boot (a respawned agent refuses too).
  assert.match(await readFile(path.join(a.root, 'run/thaw-gate-failed'), 'utf8'), /canary/);
  // A passing gate later does not undo it: this agent never starts an app.
  const ok = await a.client.request({ op: 'gate', canary_sha256: createHash('sha256').update(canary).digest('hex') }, T);
  assert.equal(ok.ok, true);
  await rejectsWith(startApp(a), 'GATE_FAILED');
  await noApp(a);
  // A missing canary file fails it too.
  const b = await startAgent(t);
  const g2 = await b.client.request({ op: 'gate', canary_sha256: createHash('sha256').update(canary).digest('hex') }, T);
  assert.equal(g2.ok, false);
  assert.equal(g2.canary_ok, false);
});

test('gate: fs_errors are the kernel log records appended after the agent started; then start_app is refused', async (t) => {
  const a = await startAgent(t, { kmsgBefore: '3,1,100,-;EXT4-fs error (device vda): old, before the agent\n' });
  const g0 = await a.client.request({ op: 'gate', canary_sha256: null }, T);
  assert.equal(g0.ok, true, 'records from before the agent started do not count');
  assert.deepEqual(g0.fs_errors, []);
  const e1 = 'EXT4-fs error (device vda): ext4_find_entry:1658: inode #12: comm node: reading directory lblock 0';
  const e2 = 'Buffer I/O error on dev vda, logical block 42, lost async page write';
  await appendFile(a.kmsg, `6,2,200,-;random: crng init done\n3,3,300,-;${e1}\n SUBSYSTEM=block\n DEVICE=b254:0\n4,4,400,c;${e2}\n`);
  const g = await a.client.request({ op: 'gate', canary_sha256: null }, T);
  assert.equal(g.ok, false);
  assert.deepEqual(g.fs_errors, [e1, e2]);
  assert.match(g.reason ?? '', /2 filesystem error/);
  await rejectsWith(startApp(a), 'GATE_FAILED', /filesystem error/);
  await noApp(a);
  // A record split across two writes is read whole.
  await appendFile(a.kmsg, '3,5,500,-;EXT4-fs err');
  const g2 = await a.client.request({ op: 'gate', canary_sha256: null }, T);
  assert.deepEqual(g2.fs_errors, []);
  await appendFile(a.kmsg, 'or (device vda): split record\n');
  const g3 = await a.client.request({ op: 'gate', canary_sha256: null }, T);
  assert.deepEqual(g3.fs_errors, ['EXT4-fs error (device vda): split record']);
});

test('gate: a failed gate kills an app that is already running', async (t) => {
  const a = await startAgent(t);
  const r = await startApp(a);
  const from = a.msgs.length;
  await appendFile(a.kmsg, '3,9,900,-;EXT4-fs error (device vda): corrupted\n');
  const g = await a.client.request({ op: 'gate', canary_sha256: null }, T);
  assert.equal(g.ok, false);
  const { msg } = await a.waitFor((m) => m.type === 'app_exit', from);
  assert.ok(msg.type === 'app_exit' && msg.pid === r.pid && msg.signal === 'SIGKILL');
  assert.ok(await waitGone(r.pid));
});

// ---------------------------------------------------------------------------
// clock, reseed

// ---------------------------------------------------------------------------
// volumes (on a host nothing is mounted: the path is made under the test root, mounted: false)

test('mount_volume: only before the app starts and never after a failed gate; unmount_volume only with the app stopped', async (t) => {
  const a = await startAgent(t);
  const m = await a.client.request({ op: 'mount_volume', device: '/dev/vdb', path: '/srv/data' }, T);
  assert.deepEqual({ ...m, ms: 0 }, { device: '/dev/vdb', path: '/srv/data', mounted: false, ms: 0 });
  assert.ok((await stat(path.join(a.root, 'srv/data'))).isDirectory(), 'the mount point is made');
  const r = await startApp(a);
  await rejectsWith(a.client.request({ op: 'mount_volume', device: '/dev/vdb', path: '/srv/data' }, T), 'AGENT_ERROR', new RegExp(`before the app starts \\(pid ${r.pid}`));
  await rejectsWith(a.client.request({ op: 'unmount_volume', device: '/dev/vdb', path: '/srv/data' }, T), 'AGENT_ERROR', /stop the app/);
  assert.equal((await alive(a)).app_pid, r.pid, 'the app is untouched');
  await a.client.request({ op: 'stop_app', timeout_ms: 2000 }, T);
  const u = await a.client.request({ op: 'unmount_volume', device: '/dev/vdb', path: '/srv/data' }, T);
  assert.deepEqual({ ...u, ms: 0 }, { path: '/srv/data', was_mounted: false, killed_stray: false, ms: 0 });
  // After a failed gate the volume is never mounted.
  const b = await startAgent(t);
  const g = await b.client.request({ op: 'gate', canary_sha256: 'ab'.repeat(32) }, T);
  assert.equal(g.ok, false);
  await rejectsWith(b.client.request({ op: 'mount_volume', device: '/dev/vdb', path: '/data' }, T), 'GATE_FAILED', /refusing to mount/);
  assert.ok(!existsSync(path.join(b.root, 'data')));
});

test('set_clock and adjust_clock (step and slew) move the virtual clock: guest_us and the next hello', async (t) => {
  const a = await startAgent(t);
  const hostBefore = Date.now();
  /** Guest clock minus host clock, in µs, from a ping (the host's clock read halfway through the round trip). */
  const offset = async () => {
    const t0 = Date.now();
    const h = await alive(a);
    return h.clock_us - ((t0 + Date.now()) / 2) * 1000;
  };
  assert.ok(Math.abs(await offset()) < 1e6);

  const target = Date.UTC(2031, 0, 2, 3, 4, 5) * 1000 + 678;
  const s = await a.client.request({ op: 'set_clock', epoch_us: target }, T);
  assert.ok(s.guest_us >= target && s.guest_us - target < 1e6, `guest_us ${s.guest_us}`);
  const h = await alive(a);
  assert.ok(h.clock_us >= target && h.clock_us - target < 2e6, 'the hello carries the set clock');
  assert.ok(Math.abs(Date.now() - hostBefore) < 60_000, "the host's clock is not touched");

  const base = await offset();
  const step = await a.client.request({ op: 'adjust_clock', delta_us: 5_000_000, slew: false }, T);
  assert.equal(step.stepped, true);
  assert.ok(Math.abs((await offset()) - base - 5_000_000) < 200_000);

  const b2 = await offset();
  const slew = await a.client.request({ op: 'adjust_clock', delta_us: 50_000, slew: true }, T);
  assert.equal(slew.stepped, false, '|delta| <= 100 ms with slew is slewed');
  assert.ok(Math.abs(slew.guest_us - (Date.now() * 1000 + b2 + 50_000)) < 100_000);
  assert.ok(Math.abs((await offset()) - b2 - 50_000) < 40_000, 'test mode applies a slew at once');

  const b3 = await offset();
  const big = await a.client.request({ op: 'adjust_clock', delta_us: -500_000, slew: true }, T);
  assert.equal(big.stepped, true, '|delta| > 100 ms is stepped even with slew');
  assert.ok(Math.abs((await offset()) - b3 + 500_000) < 100_000);
  const neg = await a.client.request({ op: 'adjust_clock', delta_us: -100_000, slew: true }, T);
  assert.equal(neg.stepped, false, '-100 ms is still slewed');

  const zero = await a.client.request({ op: 'set_clock', epoch_us: 0 }, T);
  assert.ok(zero.guest_us >= 0 && zero.guest_us < 1e6);
  assert.ok((await alive(a)).clock_us < 2e6);
  await a.client.request({ op: 'set_clock', epoch_us: Date.now() * 1000 }, T);
  assert.ok(Math.abs(await offset()) < 1e6);
  // A fresh agent starts from the real clock.
  const b = await startAgent(t);
  assert.ok(Math.abs(b.hello.clock_us - Date.now() * 1000) < 5e6);
});

test('reseed: entropy of any decodable size is accepted; not base64 is AGENT_PROTOCOL', async (t) => {
  const a = await startAgent(t);
  for (const n of [0, 1, 64, 4096, 8192, 100_000]) {
    assert.deepEqual(await a.client.request({ op: 'reseed', entropy_b64: randomBytes(n).toString('base64') }, T), { ok: true }, `${n} bytes`);
  }
  await rejectsWith(a.client.request({ op: 'reseed', entropy_b64: 'QQ' }, T), 'AGENT_PROTOCOL', /entropy_b64/);
  await alive(a);
});

// ---------------------------------------------------------------------------
// exec, ps, respawn

test('exec: stdout, stderr, exit code; runs in /; a missing program is AGENT_ERROR', async (t) => {
  const a = await startAgent(t);
  const r = await a.client.request({ op: 'exec', argv: ['sh', '-c', 'echo out; echo err >&2; printf "é\\377"; exit 7'], timeout_ms: 5000 }, T);
  assert.deepEqual(r, { code: 7, stdout: 'out\né\ufffd', stderr: 'err\n' });
  assert.deepEqual(await a.client.request({ op: 'exec', argv: ['pwd'], timeout_ms: 5000 }, T), { code: 0, stdout: '/\n', stderr: '' });
  const env = await a.client.request({ op: 'exec', argv: ['env'], timeout_ms: 5000 }, T);
  assert.match(env.stdout, /^PATH=/, 'exec gets a bare PATH, never the app env');
  assert.doesNotMatch(env.stdout, /GREETING|SECRET/);
  await rejectsWith(a.client.request({ op: 'exec', argv: [`/no/such/program-${a.tag}`], timeout_ms: 5000 }, T), 'AGENT_ERROR', /exec .*No such file/);
  await rejectsWith(a.client.request({ op: 'exec', argv: [`no-such-program-${a.tag}`], timeout_ms: 5000 }, T), 'AGENT_ERROR', /exec/);
  // Large output is captured up to 1 MiB per stream.
  const big = await a.client.request({ op: 'exec', argv: ['sh', '-c', 'head -c 3000000 /dev/zero | tr "\\0" y'], timeout_ms: 10_000 }, 15_000);
  assert.equal(big.code, 0);
  assert.equal(big.stdout, 'y'.repeat(1 << 20));
  await alive(a);
});

test('exec: timeout_ms kills it (and a background child holding its output open)', async (t) => {
  const a = await startAgent(t);
  let t0 = Date.now();
  const r = await a.client.request({ op: 'exec', argv: ['sh', '-c', `echo started; exec sleep 120.${a.tag}`], timeout_ms: 300 }, T);
  let ms = Date.now() - t0;
  assert.deepEqual(r, { code: null, stdout: 'started\n', stderr: '' });
  assert.ok(ms >= 280 && ms < 3000, `answered after ${ms} ms`);
  assert.deepEqual(tagged(a.tag), []);
  // The shell exits at once, but its background child keeps the pipes open.
  t0 = Date.now();
  const r2 = await a.client.request({ op: 'exec', argv: ['sh', '-c', `sleep 120.${a.tag} & echo bg`], timeout_ms: 300 }, T);
  ms = Date.now() - t0;
  assert.equal(r2.stdout, 'bg\n');
  assert.ok(ms < 3000, `answered after ${ms} ms`);
  await sleep(100);
  assert.deepEqual(tagged(a.tag), [], 'the background child is killed');
  await alive(a);
});

test('exec: at most 4 at once (AGENT_ERROR); SIGTERM to the agent ends them all', async (t) => {
  const a = await startAgent(t);
  const running = [0, 1, 2, 3].map(() => a.client.request({ op: 'exec', argv: ['sleep', `120.${a.tag}`], timeout_ms: 60_000 }, 60_000).catch((e: Error) => e));
  await rejectsWith(a.client.request({ op: 'exec', argv: ['true'], timeout_ms: 1000 }, T), 'AGENT_ERROR', /too many/);
  assert.equal(tagged(a.tag).length, 4);
  await alive(a);
  a.child.kill('SIGTERM');
  assert.deepEqual(await a.exited, { code: 0, signal: null });
  for (const r of await Promise.all(running)) assert.ok(r instanceof ThawError && r.code === 'VM_GONE');
  // (the harness checks that none of the four sleeps is left)
});

test('closing the channel ends the agent (test mode) and the app and commands it started', async (t) => {
  const a = await startAgent(t);
  const r = await startApp(a);
  const ex = a.client.request({ op: 'exec', argv: ['sleep', `120.${a.tag}`], timeout_ms: 60_000 }, 60_000).catch(() => {});
  await sleep(50);
  assert.equal(tagged(a.tag).length, 2);
  a.sock.end();
  assert.deepEqual(await a.exited, { code: 0, signal: null });
  await ex;
  assert.ok(await waitGone(r.pid), 'the app is gone');
});

test('ps: user processes with pid, ppid and comm; the agent and its app are in it', async (t) => {
  const a = await startAgent(t);
  const r = await startApp(a);
  const { processes } = await a.client.request({ op: 'ps' }, T);
  const byPid = new Map(processes.map((p) => [p.pid, p]));
  assert.equal(byPid.size, processes.length, 'each pid once');
  assert.deepEqual(byPid.get(a.pid) && { ppid: byPid.get(a.pid)!.ppid, comm: byPid.get(a.pid)!.comm }, { ppid: process.pid, comm: 'thaw-agent' });
  assert.equal(byPid.get(r.pid)?.ppid, a.pid);
  assert.ok(byPid.has(process.pid), 'the test runner itself');
  const kthreadd = byPid.get(2);
  assert.ok(!kthreadd || kthreadd.comm !== 'kthreadd', 'kernel threads are left out');
  process.kill(r.pid, 'SIGKILL');
  await a.waitFor((m) => m.type === 'app_exit');
  const after = await a.client.request({ op: 'ps' }, T);
  assert.ok(!after.processes.some((p) => p.pid === r.pid), 'the app is gone from ps once reaped');
});

test('respawn: answers ok, then the agent exits with code 0', async (t) => {
  const a = await startAgent(t);
  const closed = new Promise<void>((r) => a.client.once('close', () => r()));
  assert.deepEqual(await a.client.request({ op: 'respawn' }, T), { ok: true });
  assert.deepEqual(await a.exited, { code: 0, signal: null });
  await closed;
  const err = await a.client.request({ op: 'ping' }, T).then(() => null, (e: unknown) => e);
  assert.ok(err instanceof ThawError && err.code === 'VM_GONE', String(err));
});

// ---------------------------------------------------------------------------
// Hostile input

test('malformed lines get AGENT_PROTOCOL with id -1, and the agent keeps serving', async (t) => {
  const a = await startAgent(t);
  const cases: [string, string | Buffer][] = [
    ['not JSON', 'hello agent'],
    ['truncated JSON', '{"id":5,"op":"pi'],
    ['truncated object', '{"id":5,"op":"ping"'],
    ['two objects', '{"id":5,"op":"ping"}{"id":6,"op":"ping"}'],
    ['trailing junk', '{"id":5,"op":"ping"} x'],
    ['JSON array', '[{"id":5,"op":"ping"}]'],
    ['JSON string', '"ping"'],
    ['JSON number', '42'],
    ['JSON null', 'null'],
    ['missing id', '{"op":"ping"}'],
    ['negative id', '{"id":-1,"op":"ping"}'],
    ['id 2^31', `{"id":${2 ** 31},"op":"ping"}`],
    ['id 2^63', '{"id":9223372036854775808,"op":"ping"}'],
    ['id 1e400', '{"id":1e400,"op":"ping"}'],
    ['fractional id', '{"id":1.5,"op":"ping"}'],
    ['string id', '{"id":"5","op":"ping"}'],
    ['null id', '{"id":null,"op":"ping"}'],
    ['boolean id', '{"id":true,"op":"ping"}'],
    ['object id', '{"id":{},"op":"ping"}'],
    ['NaN', '{"id":NaN,"op":"ping"}'],
    ['single quotes', "{'id':5,'op':'ping'}"],
    ['raw control character in a string', '{"id":5,"op":"pi\u0001ng"}'],
    ['raw NUL byte', Buffer.from('{"id":5,"op":"ping"}\0')],
    ['BOM', '\ufeff{"id":5,"op":"ping"}'],
  ];
  // Valid JSON that JSON.parse would read, refused as a whole (id -1) by design:
  // jansson's nesting limit, keys with NUL, lone surrogates (duplicate keys: see below).
  const divergent: [string, string][] = [
    ['deep nesting', `{"id":5,"op":"ping","x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`],
    ['NUL in a key', '{"id":5,"op":"ping","a\\u0000b":1}'],
    ['lone surrogate escape', '{"id":5,"op":"ping","x":"\\ud800"}'],
  ];
  for (const [what, line] of divergent) {
    assert.equal(RequestEnvelope.safeParse(JSON.parse(line)).success, true, `${what}: JSON.parse and the schema take it`);
    await probe(a, line, -1, what);
  }
  for (const [what, line] of cases) {
    const ans = await probe(a, line, -1, what);
    if (typeof line === 'string') {
      let parsed: unknown;
      try {
        parsed = JSON.parse(line);
      } catch {
        continue;
      }
      assert.equal(RequestEnvelope.safeParse(parsed).success, false, `${what}: the schema refuses it too`);
    }
    assert.ok(ans.error.message.length > 0);
  }
  await alive(a);
});

/** Requests of the right op with one field wrong; the schema refuses every one. */
function badRequests(): [string, Record<string, unknown>][] {
  const env = { epk: 'AAAA', nonce: 'AAAA', ct: 'AAAA', tag: 'AAAA' };
  const start = { op: 'start_app', argv: ['/bin/true'], cwd: '/', uid: 0, gid: 0, env, port: 8080, listen_timeout_ms: 1000 };
  const omit = (o: Record<string, unknown>, k: string) => Object.fromEntries(Object.entries(o).filter(([key]) => key !== k));
  const out: [string, Record<string, unknown>][] = [];
  const vary = (op: string, o: Record<string, unknown>, field: string, values: unknown[]) => {
    for (const v of values) out.push([`${op}.${field} = ${JSON.stringify(v)?.slice(0, 40)}`, { ...o, [field]: v }]);
    out.push([`${op} without ${field}`, omit(o, field)]);
  };
  vary('start_app', start, 'port', [0, 70_000, 65_536, -80, 1.5, '8080', null, true]);
  vary('start_app', start, 'argv', [[], [''], ['/bin/true', ''], '/bin/true', [1], ['a', null], [['a']], null, {}, Array(4097).fill('x')]);
  vary('start_app', start, 'cwd', ['relative/dir', '', 'tmp', 5, null, ['/']]);
  vary('start_app', start, 'uid', [-1, 2 ** 31, 1.5, '0', null, 2 ** 53]);
  vary('start_app', start, 'gid', [-1, 2 ** 31, 0.5, '0', false]);
  vary('start_app', start, 'listen_timeout_ms', [0, -5, 1.5, '100', null, 2 ** 53, 1e300]);
  vary('start_app', start, 'env', ['sealed', null, [], {}, { ...env, tag: undefined }, { ...env, epk: '!!!!' }, { ...env, nonce: 5 }, { ...env, ct: 'a=b' }, { ...env, tag: 'AAAA===' }, { ...env, ct: null }]);
  const stop = { op: 'stop_app', timeout_ms: 100 };
  vary('stop_app', stop, 'timeout_ms', [0, -1, 1.5, '5', null, 2 ** 53, 1e20]);
  const scrub = { op: 'scrub', canary_b64: 'AAAA' };
  vary('scrub', scrub, 'canary_b64', [5, 'not base64!', 'ab=c', 'AAAA===', null, ['AAAA'], 'AA AA', 'AA-_']);
  vary('set_clock', { op: 'set_clock', epoch_us: 1 }, 'epoch_us', [-1, '1', 1.5, true, null, 2 ** 53, 1e20]);
  const adj = { op: 'adjust_clock', delta_us: 1, slew: true };
  vary('adjust_clock', adj, 'delta_us', [1.5, '1', null, 2 ** 53, -(2 ** 53), 1e20]);
  vary('adjust_clock', adj, 'slew', ['true', 1, 0, null]);
  vary('reseed', { op: 'reseed', entropy_b64: 'AAAA' }, 'entropy_b64', ['%%%', 7, null, 'A===', 'A=A']);
  vary('gate', { op: 'gate', canary_sha256: null }, 'canary_sha256', ['AB'.repeat(32), 'ab'.repeat(31) + 'a', 'ab'.repeat(32) + 'a', 'g'.repeat(64), '', 123, false, ['ab'.repeat(32)]]);
  vary('logs', { op: 'logs', max_bytes: 10 }, 'max_bytes', [0, -1, '10', 1.5, null, 2 ** 53]);
  const exec = { op: 'exec', argv: ['true'], timeout_ms: 100 };
  vary('exec', exec, 'argv', [[], [''], 'true', [5], null]);
  vary('exec', exec, 'timeout_ms', [0, -1, '1', 1.5, null, 2 ** 53]);
  for (const op of ['mount_volume', 'unmount_volume']) {
    const vol = { op, device: '/dev/vdb', path: '/data' };
    vary(op, vol, 'device', ['/dev/', 'vdb', '/dev/../vdb', '/dev/VDB', '/dev/vd b', '/dev/sub/vdb', `/dev/${'a'.repeat(60)}`, 5, null]);
    vary(op, vol, 'path', ['/', '', 'data', '/data/', '//data', '/a//b', '/a/./b', '/a/..', '/..', '/.', `/${'a'.repeat(255)}`, '/a\u0000b', 7, null, ['/data']]);
  }
  for (const op of ['PING', 'ping ', ' ping', 'nope', '', '__proto__', 'constructor', 'toString', 'start_app\u0000', 'x'.repeat(1000)]) out.push([`op ${JSON.stringify(op).slice(0, 20)}`, { op }]);
  for (const op of [5, null, true, ['ping'], { op: 'ping' }]) out.push([`op of type ${JSON.stringify(op)}`, { op }]);
  out.push(['no op', {}]);
  return out;
}

test('a field of the wrong type, for every op, gets AGENT_PROTOCOL with the request id (as the schema refuses it)', async (t) => {
  const a = await startAgent(t);
  const cases = badRequests();
  assert.ok(cases.length > 120, String(cases.length));
  // Every op with fields is covered.
  const covered = new Set(cases.map(([, o]) => o.op));
  for (const op of ['start_app', 'stop_app', 'scrub', 'set_clock', 'adjust_clock', 'reseed', 'gate', 'logs', 'exec', 'mount_volume', 'unmount_volume'] satisfies Op[]) assert.ok(covered.has(op), op);
  for (const [what, body] of cases) {
    const id = nextId();
    const line = JSON.stringify({ id, ...body });
    assert.equal(RequestEnvelope.safeParse(JSON.parse(line)).success, false, `${what}: the schema refuses it`);
    const ans = await probe(a, line, id, what);
    assert.doesNotMatch(ans.error.message, /does not open/, `${what}: refused while parsing, not later`);
  }
  await noApp(a);
});

test('values at the edge of the schema are accepted (ids 0 and 2^31-1, 5.0, safe integers, unknown keys)', async (t) => {
  const a = await startAgent(t);
  const ok = async (line: string, id: number, check?: (data: unknown) => void) => {
    assert.equal(RequestEnvelope.safeParse(JSON.parse(line)).success, true, `the schema accepts ${line.slice(0, 80)}`);
    const r = await rawReq(a, line, id);
    assert.ok(r.ok, `${line.slice(0, 100)}: ${JSON.stringify(r)}`);
    check?.(r.data);
  };
  await ok('{"id":0,"op":"ping"}', 0, (d) => Results.ping.parse(d));
  await ok(`{"id":${2 ** 31 - 1},"op":"ping"}`, 2 ** 31 - 1);
  await ok('{"id":5000000.0,"op":"ping"}', 5_000_000);
  await ok('{"id":5.0e6,"op":"ping"}', 5_000_000);
  await ok('{"op":"ping","id":5000001,"extra":{"nested":[1,2,{"x":null}]},"op2":"gate"}', 5_000_001);
  await ok('{"id":5000002,"op":"logs","max_bytes":1}', 5_000_002, (d) => Results.logs.parse(d));
  await ok(`{"id":5000003,"op":"logs","max_bytes":${2 ** 53 - 1}}`, 5_000_003);
  await ok(`{"id":5000004,"op":"stop_app","timeout_ms":${2 ** 53 - 1}}`, 5_000_004, (d) => assert.deepEqual(d, { pid: null, code: null, signal: null }));
  await ok('{"id":5000007,"op":"set_clock","epoch_us":0}', 5_000_007);
  await ok(`{"id":5000005,"op":"set_clock","epoch_us":${2 ** 52}}`, 5_000_005, (d) => assert.ok(Results.set_clock.parse(d).guest_us >= 2 ** 52));
  await ok(`{"id":5000006,"op":"adjust_clock","delta_us":${-(2 ** 52)},"slew":false}`, 5_000_006, (d) => assert.equal(Results.adjust_clock.parse(d).stepped, true));
  // A clock the agent could not report any more (clock_us must stay a safe integer): refused, AGENT_ERROR.
  for (const line of [
    `{"id":5000014,"op":"set_clock","epoch_us":${2 ** 53 - 1}}`,
    `{"id":5000014,"op":"adjust_clock","delta_us":${2 ** 53 - 1},"slew":false}`,
    `{"id":5000014,"op":"adjust_clock","delta_us":${-(2 ** 53 - 1)},"slew":true}`,
  ]) {
    assert.equal(RequestEnvelope.safeParse(JSON.parse(line)).success, true);
    const r = await rawReq(a, line, 5_000_014);
    assert.ok(!r.ok && r.error.code === 'AGENT_ERROR' && /range/.test(r.error.message), JSON.stringify(r));
    Results.ping.parse((await rawReq(a, '{"id":5000015,"op":"ping"}', 5_000_015) as { data: unknown }).data);
  }
  await ok(`{"id":5000008,"op":"exec","argv":["true"],"timeout_ms":${2 ** 53 - 1}}`, 5_000_008, (d) => assert.deepEqual(d, { code: 0, stdout: '', stderr: '' }));
  await ok('{"id":5000009,"op":"reseed","entropy_b64":""}', 5_000_009);
  await ok('{"id":5000010,"op":"gate","canary_sha256":null}', 5_000_010, (d) => Results.gate.parse(d));
  await ok('{"id":5000011,"op":"ps"}', 5_000_011, (d) => Results.ps.parse(d));
  await ok(`{"id":5000016,"op":"mount_volume","device":"/dev/${'z9'.repeat(29)}","path":"/${'a'.repeat(254)}"}`, 5_000_016, (d) => Results.mount_volume.parse(d));
  await ok('{"id":5000017,"op":"unmount_volume","device":"/dev/vdb","path":"/a/..b/.c/...","x":1}', 5_000_017, (d) => Results.unmount_volume.parse(d));
  await ok(`{"id":5000012,"op":"exec","argv":${JSON.stringify(['true', ...Array<string>(5000).fill('x')])},"timeout_ms":5000}`, 5_000_012);
  // A start_app at every edge that passes parsing and fails only at the seal (sealed to another key).
  const env = sealEnv({ A: 'b' }, generateAgentKey().publicB64);
  const start = { id: 5_000_013, op: 'start_app', argv: Array<string>(4096).fill('x'), cwd: '/', uid: 2 ** 31 - 1, gid: 0, env, port: 65535, listen_timeout_ms: 2 ** 53 - 1 };
  assert.equal(RequestEnvelope.safeParse(start).success, true);
  const r = await rawReq(a, start, start.id);
  assert.ok(!r.ok && r.error.code === 'AGENT_PROTOCOL' && /does not open/.test(r.error.message), JSON.stringify(r));
  for (const port of [1, 65535]) {
    const s = { ...start, id: nextId(), port };
    const r2 = await rawReq(a, s, s.id);
    assert.ok(!r2.ok && /does not open/.test(r2.error.message));
  }
  await alive(a);
});

test('lines over MAX_LINE_BYTES get one AGENT_PROTOCOL (id -1) each and the next line is served; a line of exactly MAX_LINE_BYTES is served', async (t) => {
  const a = await startAgent(t);
  const padTo = (id: number, n: number) => {
    const head = `{"id":${id},"op":"ping","pad":"`;
    return `${head}${'x'.repeat(n - head.length - 2)}"}`;
  };
  // Exactly the limit: a valid request, answered.
  const id = nextId();
  const exact = padTo(id, MAX_LINE_BYTES);
  assert.equal(Buffer.byteLength(exact), MAX_LINE_BYTES);
  assert.ok((await rawReq(a, exact, id)).ok);
  // One byte more: refused, once.
  await probe(a, padTo(nextId(), MAX_LINE_BYTES + 1), -1, 'MAX_LINE_BYTES + 1');
  // Much longer (several buffers' worth), non-JSON, sent in pieces: one answer for the whole line.
  const from = a.msgs.length;
  const pid1 = nextId();
  for (let i = 0; i < 7; i++) await a.raw('y'.repeat(MAX_LINE_BYTES / 2));
  await a.raw(`tail of the long line\n{"id":${pid1},"op":"ping"}\n`);
  const { index: i1 } = await a.waitFor((m) => m.type === 'result' && m.id === pid1, from);
  const long = a.msgs.slice(from, i1);
  assert.equal(long.length, 1, `one answer for the 3.5 MiB line: ${JSON.stringify(long)}`);
  assert.ok(long[0]!.type === 'result' && !long[0]!.ok && long[0]!.id === -1 && long[0]!.error.code === 'AGENT_PROTOCOL');
  // Two long lines back to back, in one write: two answers.
  const from2 = a.msgs.length;
  const pingId = nextId();
  await a.raw(`${'z'.repeat(MAX_LINE_BYTES + 10)}\n${'w'.repeat(MAX_LINE_BYTES * 2)}\n{"id":${pingId},"op":"ping"}\n`);
  const { index } = await a.waitFor((m) => m.type === 'result' && m.id === pingId, from2);
  const errs = a.msgs.slice(from2, index);
  assert.equal(errs.length, 2);
  for (const e of errs) assert.ok(e.type === 'result' && !e.ok && e.id === -1 && e.error.code === 'AGENT_PROTOCOL');
  await alive(a);
});

test('invalid UTF-8, NUL escapes, lone surrogates and duplicate keys are refused; answers stay valid UTF-8', async (t) => {
  const a = await startAgent(t);
  const bytes = (...parts: (string | number[])[]) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
  // Invalid UTF-8 makes the line unreadable: id -1.
  await probe(a, bytes('{"id":7,"op":"p', [0xff], 'ing"}'), -1, 'byte 0xff in a string');
  await probe(a, bytes('{"id":7,"op":"ping","x":"', [0xc3], '"}'), -1, 'truncated sequence');
  await probe(a, bytes('{"id":7,"op":"ping","x":"', [0xed, 0xa0, 0x80], '"}'), -1, 'UTF-8 encoded surrogate');
  await probe(a, bytes('{"id":7,"op":"ping","x":"', [0xc0, 0xaf], '"}'), -1, 'overlong encoding');
  await probe(a, bytes([0xfe, 0xff], '{"id":7,"op":"ping"}'), -1, 'bytes outside strings');
  // Duplicate keys are ambiguous (JSON.parse would take the last): refused.
  await probe(a, '{"id":7,"id":8,"op":"ping"}', -1, 'duplicate id');
  await probe(a, '{"id":7,"op":"ping","op":"ps"}', -1, 'duplicate op');
  // A string C cannot carry (NUL) where the id is usable: refused with that id.
  for (const [what, body] of [
    ['NUL in op', { op: 'ping\u0000' }],
    ['NUL in an exec argv', { op: 'exec', argv: ['sh\u0000-c'], timeout_ms: 100 }],
    ['NUL in a start_app cwd', { op: 'start_app', argv: ['/bin/true'], cwd: '/\u0000tmp', uid: 0, gid: 0, env: sealEnv({}, a.hello.pubkey), port: 1, listen_timeout_ms: 1 }],
    ['NUL in canary_b64', { op: 'scrub', canary_b64: 'AAAA\u0000' }],
  ] as const) {
    const id = nextId();
    await probe(a, JSON.stringify({ id, ...body }), id, what);
  }
  // Non-ASCII in an unknown op is echoed back as valid UTF-8, even cut short.
  const id = nextId();
  const ans = await probe(a, JSON.stringify({ id, op: `x${'é'.repeat(25)}` }), id, 'unknown op, 2-byte characters');
  assert.match(ans.error.message, /^unknown op "xé{19}\ufffd?"$/, 'cut at 40 bytes, inside a character');
  const id2 = nextId();
  await probe(a, JSON.stringify({ id: id2, op: '\ud83d\ude00'.repeat(20) }), id2, 'unknown op, 4-byte characters');
  // Escaped non-ASCII and escaped ASCII in a valid request are fine.
  const id3 = nextId();
  assert.ok((await rawReq(a, `{"id":${id3},"op":"p\\u0069ng","x":"\\u00e9\\ud83d\\ude00"}`, id3)).ok);
  await alive(a);
});

test('framing: many messages in one write, one message across many writes, CRLF, blank lines', async (t) => {
  const a = await startAgent(t);
  // 300 requests in one write, mixed with bad lines: every one answered, in order.
  const ids: number[] = [];
  let chunk = '';
  for (let i = 0; i < 300; i++) {
    const id = nextId();
    ids.push(id);
    chunk += i % 3 === 0 ? `{"id":${id},"op":"ps"}\n` : i % 3 === 1 ? `{"id":${id},"op":"ping"}\n` : `{"id":${id},"op":"nope"}\n`;
  }
  const from = a.msgs.length;
  await a.raw(chunk);
  await a.waitFor((m) => m.type === 'result' && m.id === ids.at(-1), from, 20_000);
  const got = a.msgs.slice(from).filter((m): m is ResultMsg => m.type === 'result');
  assert.deepEqual(got.map((m) => m.id), ids, 'every request answered once, in order');
  got.forEach((m, i) => {
    if (i % 3 === 2) assert.ok(!m.ok && m.error.code === 'AGENT_PROTOCOL');
    else assert.ok(m.ok && (i % 3 === 0 ? Results.ps : Results.ping).safeParse(m.data).success);
  });
  // One request, one byte per write (splitting multi-byte characters too).
  const id = nextId();
  const line = Buffer.from(`{"id":${id},"op":"ping","x":"é✓😀 split"}\n`);
  const from2 = a.msgs.length;
  for (const b of line) {
    await a.raw(Buffer.from([b]));
    await sleep(1);
  }
  const { msg } = await a.waitFor((m) => m.type === 'result' && m.id === id, from2);
  assert.ok(msg.type === 'result' && msg.ok);
  // A start_app split in three writes, with pauses, starts the app.
  const { req } = await startRequest(a);
  const sid = nextId();
  const text = `${JSON.stringify({ id: sid, ...req })}\n`;
  const third = Math.floor(text.length / 3);
  await a.raw(text.slice(0, third));
  await sleep(30);
  await a.raw(text.slice(third, 2 * third));
  await sleep(30);
  await a.raw(text.slice(2 * third));
  const st = await a.waitFor((m) => m.type === 'result' && m.id === sid, 0, 10_000);
  assert.ok(st.msg.type === 'result' && st.msg.ok, JSON.stringify(st.msg));
  Results.start_app.parse(st.msg.data);
  // CRLF, blank and whitespace-only lines: no answer for the blank ones, an answer for the CRLF one.
  const id4 = nextId();
  const from4 = a.msgs.length;
  await a.raw(`\n\n   \n\r\n\t\n{"id":${id4},"op":"ping"}\r\n`);
  const r4 = await a.waitFor((m) => m.type === 'result' && m.id === id4, from4);
  assert.equal(r4.index, from4, 'blank lines are not answered');
  await alive(a);
});

test('out of order: stop_app before any start, scrub with an app running, logs/gate/ps with no app', async (t) => {
  const a = await startAgent(t);
  assert.deepEqual(await a.client.request({ op: 'stop_app', timeout_ms: 1 }, T), { pid: null, code: null, signal: null });
  assert.equal((await a.client.request({ op: 'logs', max_bytes: 10 }, T)).text, '');
  assert.equal((await a.client.request({ op: 'gate', canary_sha256: null }, T)).ok, true);
  await a.client.request({ op: 'ps' }, T);
  const r = await startApp(a, { mode: 'ignore-term' });
  await rejectsWith(a.client.request({ op: 'scrub', canary_b64: 'AAAA' }, T), 'AGENT_ERROR', /stop the app/);
  // Pipelined: stop_app, then start_app while the app is still stopping.
  const stopP = a.client.request({ op: 'stop_app', timeout_ms: 500 }, T);
  const startP = startApp(a);
  await rejectsWith(startP, 'AGENT_ERROR', /already running/);
  assert.deepEqual(await stopP, { pid: r.pid, code: null, signal: 'SIGKILL' });
  // start_app, and a stop_app before it listens: the start is APP_CRASHED, the stop gets the result.
  const { req } = await startRequest(a, { mode: 'never' });
  const s2 = a.client.request(req, T);
  await sleep(100);
  const stop2 = await a.client.request({ op: 'stop_app', timeout_ms: 2000 }, T);
  await rejectsWith(s2, 'APP_CRASHED', /exited before listening/);
  assert.equal(stop2.signal, 'SIGTERM');
  await alive(a);
});
