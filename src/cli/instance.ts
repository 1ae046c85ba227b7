// Instance discovery. `thaw up --data DIR` writes DIR/token (0600) and
// DIR/instance.json {api_url, router_url, pid, api_fingerprint?}: URLs a client
// on this host can use (a wildcard bind becomes loopback). Every other command reads them.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { ThawError } from '../errors.ts';

export const InstanceFile = z.object({
  api_url: z.string().url(),
  router_url: z.string().url(),
  pid: z.number().int().positive(),
  /** An https:// API: the fingerprint its certificate (or the cluster CA) is pinned to. */
  api_fingerprint: z.string().optional(),
});
export type InstanceFile = z.infer<typeof InstanceFile>;

export interface Instance {
  dataDir: string;
  apiUrl: string;
  routerUrl: string;
  pid: number;
  token: string;
  apiFingerprint?: string;
}

/** `--data`, else $THAW_DATA, else ~/.thaw; always absolute. */
export function dataDirFrom(opts: { data?: string | undefined }, env: NodeJS.ProcessEnv = process.env): string {
  const dir = opts.data || env.THAW_DATA || path.join(os.homedir(), '.thaw');
  return path.resolve(dir);
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

/** The running instance for `dataDir`; NOT_RUNNING when its files are missing or its pid is dead. */
export async function readInstance(dataDir: string): Promise<Instance> {
  const file = path.join(dataDir, 'instance.json');
  let raw: string;
  let token: string;
  try {
    raw = await readFile(file, 'utf8');
    token = (await readFile(path.join(dataDir, 'token'), 'utf8')).trim();
  } catch (err) {
    throw new ThawError('NOT_RUNNING', `no running Thaw found in ${dataDir} (missing ${path.basename(file)} or token)`, { cause: err, details: { dataDir } });
  }
  let info: InstanceFile;
  try {
    info = InstanceFile.parse(JSON.parse(raw));
  } catch (err) {
    throw new ThawError('NOT_RUNNING', `${file} is unreadable; restart with \`thaw up\``, { cause: err, details: { dataDir } });
  }
  if (!pidAlive(info.pid)) {
    throw new ThawError('NOT_RUNNING', `Thaw (pid ${info.pid}) is not running; ${file} is stale`, { details: { dataDir, pid: info.pid } });
  }
  return { dataDir, apiUrl: info.api_url, routerUrl: info.router_url, pid: info.pid, token, ...(info.api_fingerprint ? { apiFingerprint: info.api_fingerprint } : {}) };
}

/** For `thaw up`: write the token (0600) and instance.json atomically. */
export async function writeInstance(dataDir: string, info: InstanceFile, token: string): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const write = async (name: string, text: string, mode: number) => {
    const tmp = path.join(dataDir, `.${name}.${process.pid}.tmp`);
    await writeFile(tmp, text, { mode });
    await rename(tmp, path.join(dataDir, name));
  };
  await write('token', `${token}\n`, 0o600);
  await write('instance.json', `${JSON.stringify(InstanceFile.parse(info), null, 2)}\n`, 0o644);
}

/** For `thaw up` on shutdown: remove instance.json (the token stays for the next start). */
export async function removeInstance(dataDir: string): Promise<void> {
  await rm(path.join(dataDir, 'instance.json'), { force: true });
}

/** `http://NAME.<domain>:<port>/` from the router URL. */
export function appUrl(routerUrl: string, name: string): string {
  const u = new URL(routerUrl);
  return `${u.protocol}//${name}.${u.hostname}${u.port ? `:${u.port}` : ''}/`;
}
