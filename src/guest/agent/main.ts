// Thaw guest agent: runs inside the VM from boot (respawned by /sbin/thaw-init
// when it exits) and survives snapshots. Speaks src/wire/agent.ts over the
// virtio-serial port.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { APP_LOG, CANARY_PATH, PROTOCOL_VERSION, RequestEnvelope, type Hello, type Request } from '../../wire/agent.ts';
import { generateAgentKey, openEnv } from '../../wire/seal.ts';
import { App, tail } from './app.ts';
import { kernelFsErrors, openKernelLog, runGate } from './gate.ts';
import { Port } from './port.ts';

const startedAt = Date.now();
const key = generateAgentKey();
const bootId = (() => {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return randomBytes(16).toString('hex');
  }
})();
const port = new Port();
const app = new App();
openKernelLog();
/** The app never starts before a requested clock change is done. */
let clockSet: Promise<unknown> = Promise.resolve();
/** Set by a failed liveness gate: this machine may lie, the app must not start on it. */
let gateFailed: string | null = null;

function hello(): Hello {
  return { version: PROTOCOL_VERSION, agent_pid: process.pid, boot_id: bootId, pubkey: key.publicB64, app_pid: app.pid, uptime_ms: Date.now() - startedAt };
}

/**
 * Before a bake nothing of the app may survive: kill every user process but
 * init and this agent (workers that left the app's process group, daemons it
 * spawned), since their memory holds the env.
 */
function killStrays(): void {
  for (const d of readdirSync('/proc')) {
    const pid = Number(d);
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) continue;
    try {
      if (readFileSync(`/proc/${pid}/cmdline`).length === 0) continue; // kernel thread
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

function sh(argv: string[], timeoutMs = 10_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

async function handle(req: Request): Promise<unknown> {
  switch (req.op) {
    case 'ping':
      return hello();
    case 'start_app': {
      if (gateFailed) throw Object.assign(new Error(`refusing to start the app: ${gateFailed}`), { code: 'GATE_FAILED' });
      const env = openEnv(req.env, key);
      await clockSet;
      if (gateFailed) throw Object.assign(new Error(`refusing to start the app: ${gateFailed}`), { code: 'GATE_FAILED' });
      const pid = app.start(env, req.port);
      const listen_ms = await app.waitListening(req.port, req.listen_timeout_ms);
      return { pid, listen_ms };
    }
    case 'stop_app': {
      const e = await app.stop(req.timeout_ms);
      return { pid: e?.pid ?? null, code: e?.code ?? null, signal: e?.signal ?? null };
    }
    case 'scrub': {
      const t0 = Date.now();
      if (app.pid !== null) throw Object.assign(new Error('stop the app before scrub'), { code: 'AGENT_ERROR' });
      app.scrubFiles();
      killStrays();
      for (const e of readdirSync('/tmp')) rmSync(`/tmp/${e}`, { recursive: true, force: true });
      const errors = kernelFsErrors();
      if (errors.length) throw Object.assign(new Error(`refusing to bake a machine with filesystem errors: ${errors[0]}`), { code: 'GATE_FAILED' });
      mkdirSync('/var/lib/thaw', { recursive: true });
      const fd = openSync(CANARY_PATH, 'w', 0o600);
      writeSync(fd, Buffer.from(req.canary_b64, 'base64'));
      fsyncSync(fd);
      closeSync(fd);
      await sh(['sync']);
      return { canary_path: CANARY_PATH, ms: Date.now() - t0 };
    }
    case 'respawn':
      // SIGKILL, not exit(): a thread-pool thread is blocked in read() on the
      // port, and a graceful exit would wait for it forever.
      setTimeout(() => process.kill(process.pid, 'SIGKILL'), 20);
      return { ok: true };
    case 'set_clock': {
      const p = sh(['date', '-u', '-s', `@${Math.round(req.epoch_ms / 1000)}`]);
      clockSet = p;
      const r = await p;
      if (r.code !== 0) throw new Error(`date -s failed: ${r.stderr}`);
      return { ok: true };
    }
    case 'reseed': {
      const fd = openSync('/dev/urandom', 'w');
      writeSync(fd, Buffer.from(req.entropy_b64, 'base64'));
      closeSync(fd);
      return { ok: true };
    }
    case 'gate': {
      const g = runGate(req.canary_sha256);
      if (!g.ok) gateFailed = g.reason ?? 'liveness gate failed';
      return g;
    }
    case 'logs':
      return { text: tail(APP_LOG, req.max_bytes) };
    case 'exec':
      return sh(req.argv, req.timeout_ms);
  }
}

port.onLine = (line) => {
  let id = -1;
  try {
    const raw = JSON.parse(line) as { id?: unknown };
    if (typeof raw.id === 'number') id = raw.id;
    const req = RequestEnvelope.parse(raw);
    handle(req).then(
      (data) => port.send({ type: 'result', id, ok: true, data }),
      (err: Error & { code?: string; log_tail?: string }) =>
        port.send({ type: 'result', id, ok: false, error: { code: typeof err.code === 'string' ? err.code : 'AGENT_ERROR', message: err.log_tail ? `${err.message}\n${err.log_tail}` : err.message } }),
    );
  } catch (err) {
    void port.send({ type: 'result', id, ok: false, error: { code: 'AGENT_PROTOCOL', message: (err as Error).message.slice(0, 500) } });
  }
};
port.onHostGone = () => void port.send({ type: 'hello', hello: hello() });
app.onExit = (e) => void port.send({ type: 'app_exit', ...e, log_tail: tail(APP_LOG, 4000) });

await port.open();
void port.send({ type: 'hello', hello: hello() });
await port.readLoop();
