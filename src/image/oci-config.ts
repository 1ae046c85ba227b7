// An OCI image config -> how the program starts in the guest (RunConfig),
// with Docker's semantics:
//   - argv = Entrypoint + Cmd; a command given at deploy replaces Cmd (as
//     `docker run IMAGE CMD…` does); neither -> IMAGE_NO_COMMAND.
//   - cwd = WorkingDir, `/` when unset (relative -> under `/`).
//   - User `name|uid[:group|gid]`, names resolved from the image's own
//     /etc/passwd and /etc/group (read inside the root: symlinks are resolved
//     with the root as `/`, never on the host); no group -> the user's
//     primary group from /etc/passwd, else 0; an unknown name ->
//     IMAGE_USER_UNKNOWN.
//   - env = Env as a record (later entries win), plus PATH (Docker's default)
//     and HOME (the user's home in /etc/passwd, else `/`) when the image sets
//     none.
//   - port = the lowest TCP port in ExposedPorts (`8080/tcp`, `8080`), null
//     when none.
import { constants } from 'node:fs';
import { lstat, open, readlink } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ThawError } from '../errors.ts';
import { RunConfig } from '../wire/run.ts';

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const strings = z.array(z.string()).nullish();
/** The parts of an OCI image config (image-spec config.md) Thaw reads. */
export const ImageConfigJson = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  config: z
    .object({
      User: z.string().nullish(),
      ExposedPorts: z.record(z.string(), z.unknown()).nullish(),
      Env: strings,
      Entrypoint: strings,
      Cmd: strings,
      WorkingDir: z.string().nullish(),
    })
    .passthrough()
    .nullish(),
});
export type ImageConfigJson = z.infer<typeof ImageConfigJson>;

/** Parse an image config blob. Errors: IMAGE_INVALID. */
export function parseImageConfig(json: unknown): ImageConfigJson {
  const r = ImageConfigJson.safeParse(json);
  if (!r.success) throw new ThawError('IMAGE_INVALID', `the image config is malformed: ${r.error.issues[0]?.message ?? 'invalid'}`);
  return r.data;
}

export function imageArgv(cfg: ImageConfigJson, command?: readonly string[]): string[] {
  const c = cfg.config ?? {};
  const argv = [...(c.Entrypoint ?? []), ...(command && command.length > 0 ? command : (c.Cmd ?? []))];
  if (argv.length === 0 || argv[0] === '') {
    throw new ThawError('IMAGE_NO_COMMAND', 'the image config has no Entrypoint or Cmd and no command was given');
  }
  return argv;
}

export function imageEnv(cfg: ImageConfigJson): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of cfg.config?.Env ?? []) {
    const i = kv.indexOf('=');
    const k = i < 0 ? kv : kv.slice(0, i);
    if (k !== '') env[k] = i < 0 ? '' : kv.slice(i + 1);
  }
  return env;
}

export function imagePort(cfg: ImageConfigJson): number | null {
  let best: number | null = null;
  for (const key of Object.keys(cfg.config?.ExposedPorts ?? {})) {
    const m = /^([0-9]{1,5})(?:\/(tcp|udp|sctp))?$/i.exec(key);
    if (!m || (m[2] && m[2].toLowerCase() !== 'tcp')) continue;
    const port = Number(m[1]);
    if (port >= 1 && port <= 65535 && (best === null || port < best)) best = port;
  }
  return best;
}

interface PasswdEntry { name: string; uid: number; gid: number; home: string }
interface GroupEntry { name: string; gid: number }

const ID = /^[0-9]{1,10}$/;
const MAX_ID = 2 ** 31 - 1;

function parseId(s: string, what: string, spec: string): number {
  const n = Number(s);
  if (!ID.test(s) || n > MAX_ID) throw new ThawError('IMAGE_USER_UNKNOWN', `image User ${JSON.stringify(spec)}: ${what} ${s} is out of range`);
  return n;
}

export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 7 || !ID.test(f[2]!) || !ID.test(f[3]!)) continue;
    out.push({ name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! });
  }
  return out;
}

export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 3 || !ID.test(f[2]!)) continue;
    out.push({ name: f[0]!, gid: Number(f[2]) });
  }
  return out;
}

/** Resolve a config User against the image's /etc/passwd and /etc/group texts (null when missing). */
export function resolveUser(spec: string, passwd: string | null, group: string | null): { uid: number; gid: number; home: string } {
  const users = parsePasswd(passwd ?? '');
  const [u = '', g] = spec.split(/:(.*)/s, 2) as [string?, string?];
  let uid = 0;
  let entry: PasswdEntry | undefined;
  if (u === '') entry = users.find((e) => e.uid === 0);
  else if (ID.test(u)) {
    uid = parseId(u, 'uid', spec);
    entry = users.find((e) => e.uid === uid);
  } else {
    entry = users.find((e) => e.name === u);
    if (!entry) throw new ThawError('IMAGE_USER_UNKNOWN', `image User ${JSON.stringify(spec)}: no user ${JSON.stringify(u)} in the image's /etc/passwd`, { details: { user: spec } });
    uid = entry.uid;
  }
  let gid = entry?.gid ?? 0;
  if (g !== undefined && g !== '') {
    if (ID.test(g)) gid = parseId(g, 'gid', spec);
    else {
      const ge = parseGroup(group ?? '').find((e) => e.name === g);
      if (!ge) throw new ThawError('IMAGE_USER_UNKNOWN', `image User ${JSON.stringify(spec)}: no group ${JSON.stringify(g)} in the image's /etc/group`, { details: { user: spec } });
      gid = ge.gid;
    }
  }
  return { uid, gid, home: entry?.home || '/' };
}

/**
 * Read a small file of an unpacked root as the guest would see it: symlinks
 * are followed with `root` as `/` and `..` stops at it. Null when missing,
 * not a regular file, or larger than `maxBytes`.
 */
export async function readInRoot(root: string, p: string, maxBytes = 1 << 20): Promise<string | null> {
  const todo = p.split('/').filter((c) => c !== '' && c !== '.');
  const at: string[] = [];
  for (let hops = 0; todo.length > 0; ) {
    const c = todo.shift()!;
    if (c === '..') {
      at.pop();
      continue;
    }
    const full = path.join(root, ...at, c);
    const st = await lstat(full).catch(() => null);
    if (!st) return null;
    if (st.isSymbolicLink()) {
      if (++hops > 40) return null;
      const target = await readlink(full);
      if (target.startsWith('/')) at.length = 0;
      todo.unshift(...target.split('/').filter((x) => x !== '' && x !== '.'));
      continue;
    }
    at.push(c);
    if (todo.length > 0 && !st.isDirectory()) return null;
    if (todo.length === 0 && (!st.isFile() || st.size > maxBytes)) return null;
  }
  if (at.length === 0) return null;
  // O_NOFOLLOW: the last component was checked above and must not have turned into a link since.
  const fh = await open(path.join(root, ...at), constants.O_RDONLY | constants.O_NOFOLLOW).catch(() => null);
  if (!fh) return null;
  try {
    return (await fh.readFile({ encoding: 'utf8' })).slice(0, maxBytes);
  } finally {
    await fh.close();
  }
}

/** The run config and port of an image whose root is unpacked at `rootfs`. */
export async function imageRunConfig(cfg: ImageConfigJson, rootfs: string, opts: { command?: readonly string[] } = {}): Promise<{ run: RunConfig; port: number | null }> {
  const c = cfg.config ?? {};
  const argv = imageArgv(cfg, opts.command);
  const spec = c.User ?? '';
  const needsFiles = spec !== '' || !('HOME' in imageEnv(cfg));
  const [passwd, group] = needsFiles ? await Promise.all([readInRoot(rootfs, '/etc/passwd'), readInRoot(rootfs, '/etc/group')]) : [null, null];
  const user = resolveUser(spec, passwd, group);
  const env = { PATH: DEFAULT_PATH, HOME: user.home, ...imageEnv(cfg) };
  const cwd = c.WorkingDir ? path.posix.resolve('/', c.WorkingDir) : '/';
  const parsed = RunConfig.safeParse({ argv, cwd, uid: user.uid, gid: user.gid, port: imagePort(cfg) ?? 8080, env });
  if (!parsed.success) {
    throw new ThawError('IMAGE_INVALID', `the image config gives an unusable run config: ${parsed.error.issues[0]?.message ?? 'invalid'}`, {
      details: { issues: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`) },
    });
  }
  return { run: parsed.data, port: imagePort(cfg) };
}
