// Test and bench helper: a `thaw node` child process (bin/thaw.js), its pino
// log lines watched for messages, its exit awaited.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface NodeProc {
  name: string;
  dir: string;
  proc: ChildProcess;
  exited: Promise<void>;
  /** Resolves when a log line with this message appears. */
  waitLog(msg: string): Promise<Record<string, unknown>>;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM (graceful: VMs deleted, the control plane told) and wait. */
  stop(): Promise<void>;
  /** The last 4 KB of its stderr. */
  stderr(): string;
}

export interface NodeProcOptions {
  name: string;
  dir: string;
  control: string;
  tokenFile: string;
  s3?: { endpoint: string; bucket: string; accessKeyId: string; secretAccessKey: string };
  nodeTimeoutMs?: number;
  extraArgs?: string[];
  /** The test expects it to exit with an error: do not print its stderr. */
  expectExit?: boolean;
  /** argv prefix, e.g. `ip netns exec NS` to run the node on another "host". */
  wrap?: string[];
}

export function spawnNode(o: NodeProcOptions): NodeProc {
  const args = [path.join(ROOT, 'bin', 'thaw.js'), '--data', o.dir, 'node', '--control', o.control, '--name', o.name, '--token-file', o.tokenFile,
    '--node-timeout', String(o.nodeTimeoutMs ?? 5000), ...(o.s3 ? ['--s3-endpoint', o.s3.endpoint, '--s3-bucket', o.s3.bucket] : []), ...(o.extraArgs ?? [])];
  const [cmd, ...pre] = [...(o.wrap ?? []), process.execPath];
  const proc = spawn(cmd!, [...pre, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, THAW_LOG_LEVEL: 'info', ...(o.s3 ? { AWS_ACCESS_KEY_ID: o.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: o.s3.secretAccessKey } : {}) },
  });
  const waiters: { msg: string; resolve: (line: Record<string, unknown>) => void }[] = [];
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  createInterface({ input: proc.stdout! }).on('line', (text) => {
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return;
    }
    for (const w of waiters.filter((x) => x.msg === line.msg)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(line);
    }
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  void exited.then(() => {
    if (proc.exitCode && !o.expectExit) console.error(`node ${o.name} exited with ${proc.exitCode}: ${stderr}`);
  });
  const alive = () => proc.exitCode === null && proc.signalCode === null;
  return {
    name: o.name,
    dir: o.dir,
    proc,
    exited,
    waitLog: (msg) => new Promise((resolve) => waiters.push({ msg, resolve })),
    kill: async () => {
      if (alive()) proc.kill('SIGKILL');
      await exited;
    },
    stop: async () => {
      if (alive()) proc.kill('SIGTERM');
      await exited;
    },
    stderr: () => stderr,
  };
}
