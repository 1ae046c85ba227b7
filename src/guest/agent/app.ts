// The app process inside the guest: started with the env the host delivers
// (written to a tmpfs env file, never to disk), watched until it listens on
// its port, stopped on request, its exit reported.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { APP_LOG, ENV_FILE } from '../../wire/agent.ts';

export interface AppExit {
  pid: number;
  code: number | null;
  signal: string | null;
}

export function tail(file: string, max: number): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.length > max ? text.slice(-max) : text;
  } catch {
    return '';
  }
}

function quote(v: string): string {
  return `'${v.replace(/'/g, `'\\''`)}'`;
}

export class App {
  child: ChildProcess | null = null;
  private exited: Promise<AppExit> | null = null;
  onExit: (e: AppExit) => void = () => {};

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  start(env: Record<string, string>, port: number): number {
    if (this.child) throw new Error('app already running');
    const pkg = JSON.parse(readFileSync('/app/package.json', 'utf8')) as { scripts?: { start?: string } };
    const start = pkg.scripts?.start;
    if (!start) throw new Error('package.json has no scripts.start');
    const full: Record<string, string> = {
      PATH: '/app/node_modules/.bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
      HOME: '/root',
      NODE_ENV: 'production',
      ...env,
      PORT: String(port),
    };
    writeFileSync(ENV_FILE, Object.entries(full).map(([k, v]) => `${k}=${quote(v)}\n`).join(''), { mode: 0o600 });
    const log = openSync(APP_LOG, 'a', 0o600);
    const child = spawn('/bin/sh', ['-c', `exec ${start}`], { cwd: '/app', env: full, stdio: ['ignore', log, log], detached: true });
    closeSync(log);
    this.child = child;
    this.exited = new Promise<AppExit>((resolve) => {
      child.once('exit', (code, signal) => {
        const e = { pid: child.pid ?? -1, code, signal };
        if (this.child === child) this.child = null;
        this.onExit(e);
        resolve(e);
      });
      child.once('error', () => resolve({ pid: child.pid ?? -1, code: null, signal: null }));
    });
    if (!child.pid) throw new Error('spawn failed');
    return child.pid;
  }

  /** Resolve when something accepts connections on the port; reject if the app exits first or time runs out. */
  async waitListening(port: number, timeoutMs: number): Promise<number> {
    const t0 = Date.now();
    const exited = this.exited;
    let gone = false;
    void exited?.then(() => (gone = true));
    while (Date.now() - t0 < timeoutMs) {
      if (gone) throw Object.assign(new Error(`app exited before listening on ${port}`), { code: 'APP_CRASHED', log_tail: tail(APP_LOG, 4000) });
      const ok = await new Promise<boolean>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port }, () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      });
      if (ok) return Date.now() - t0;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw Object.assign(new Error(`app did not listen on ${port} within ${timeoutMs} ms`), { code: 'APP_START_TIMEOUT', log_tail: tail(APP_LOG, 4000) });
  }

  async stop(timeoutMs: number): Promise<AppExit | null> {
    const child = this.child;
    if (!child?.pid || !this.exited) return null;
    const pid = child.pid;
    const kill = (sig: NodeJS.Signals) => {
      try {
        process.kill(-pid, sig);
      } catch {
        /* already gone */
      }
    };
    kill('SIGTERM');
    const timer = setTimeout(() => kill('SIGKILL'), timeoutMs);
    const e = await this.exited;
    clearTimeout(timer);
    kill('SIGKILL'); // the rest of its process group
    return e;
  }

  scrubFiles(): void {
    rmSync(ENV_FILE, { force: true });
    rmSync(APP_LOG, { force: true });
  }
}
