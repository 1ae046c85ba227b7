// skopeo and umoci, run as child processes, and their failures mapped to
// stable codes. Debian 12: skopeo 1.9, umoci 0.4.7 (scripts/oci-tools.sh).
//
// Credentials never go on a command line (other users can read argv): a
// USER:PASSWORD pair is written to a 0600 auth file in the cache's tmp
// folder for the duration of the call and passed as --authfile.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ThawError } from '../errors.ts';
import type { ImageRef } from './oci-ref.ts';

export interface ToolResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

export interface RegistryAuth {
  username: string;
  password: string;
}

const TOOL_PATH = `${process.env.PATH ?? ''}:/usr/local/sbin:/usr/sbin:/sbin`;

/** Run a tool; stdout is kept whole up to `maxStdout`, stderr's tail; `onLine` sees stdout lines as they come. */
export function runTool(cmd: string, args: string[], opts: { onLine?: (line: string) => void; maxStdout?: number } = {}): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, PATH: TOOL_PATH }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let outLen = 0;
    let partial = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      if (outLen < (opts.maxStdout ?? 8 << 20)) out.push(d);
      outLen += d.length;
      if (opts.onLine) {
        const lines = (partial + d.toString('utf8')).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) if (l.trim()) opts.onLine(l.trim());
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-64 * 1024)));
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') {
        reject(new ThawError('HOST_MISSING_TOOL', `${cmd} is not installed (bash scripts/oci-tools.sh installs it)`, { cause: err, details: { tool: cmd } }));
      } else reject(err);
    });
    child.on('close', (code) => {
      if (opts.onLine && partial.trim()) opts.onLine(partial.trim());
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
  });
}

/** skopeo's `level=fatal msg="…"` line, unquoted; else the last lines of stderr. */
export function skopeoMessage(stderr: string): string {
  const m = /msg="((?:[^"\\]|\\.)*)"/.exec(stderr.split('\n').filter((l) => l.includes('level=fatal')).at(-1) ?? '');
  if (m) {
    try {
      return JSON.parse(`"${m[1]}"`) as string;
    } catch {
      return m[1]!;
    }
  }
  return stderr.trim().split('\n').slice(-5).join('\n');
}

/** Map a failed skopeo run to a code. */
export function skopeoError(stderr: string, ref: ImageRef, what: string): ThawError {
  const msg = skopeoMessage(stderr);
  const details = { ref: ref.name, stderr: stderr.trim().split('\n').slice(-20).join('\n') };
  const e = (code: ConstructorParameters<typeof ThawError>[0], text: string): ThawError => new ThawError(code, `${text}: ${msg}`, { details });
  if (/no image found in (image index|manifest list)|no matching manifest|does not match the expected platform/i.test(msg)) {
    return e('IMAGE_PLATFORM_UNSUPPORTED', `${ref.name} has no linux/amd64 image`);
  }
  if (/digest did not match|digest mismatch|does not match (the )?(expected )?digest|manifest digest .* does not match|size mismatch/i.test(msg)) {
    return e('IMAGE_DIGEST_MISMATCH', `${what} ${ref.name}: content does not match its digest`);
  }
  if (ref.kind === 'registry') {
    if (/unauthorized|authentication required|invalid username\/password|incorrect username or password|access to the resource is denied|\bdenied\b|status 401|status 403/i.test(msg)) {
      return e('REGISTRY_AUTH_FAILED', `registry ${ref.registry} refused the credentials for ${ref.repository}`);
    }
    if (/manifest unknown|name unknown|blob unknown|not found|status 404/i.test(msg)) return e('IMAGE_NOT_FOUND', `${ref.name} was not found`);
    if (/pinging container registry|connection refused|no such host|i\/o timeout|timeout|deadline exceeded|network is unreachable|no route to host|connection reset|tls|x509|certificate|EOF|server gave HTTP response/i.test(msg)) {
      return e('REGISTRY_UNREACHABLE', `registry ${ref.registry} is unreachable`);
    }
    return e('IMAGE_PULL_FAILED', `${what} ${ref.name} failed`);
  }
  if (/no descriptor found for reference/i.test(msg)) return e('IMAGE_NOT_FOUND', `${ref.name}: no such tag`);
  if (/no space left|ENOSPC|disk quota/i.test(msg)) return e('IMAGE_PULL_FAILED', `${what} ${ref.name} failed`);
  return e('IMAGE_INVALID', `${ref.name} is not a readable ${ref.kind === 'oci' ? 'OCI layout' : ref.kind}`);
}

/** Flags skopeo takes before its subcommand. */
export function skopeoGlobal(tmpDir: string): string[] {
  const args = ['--override-os', 'linux', '--override-arch', 'amd64', '--tmpdir', tmpDir];
  // Without any trust policy skopeo refuses to run; the host's policy is honoured when it exists.
  const policies = [path.join(os.homedir(), '.config/containers/policy.json'), '/etc/containers/policy.json'];
  if (!policies.some((p) => existsSync(p))) args.push('--insecure-policy');
  return args;
}

export interface AuthArgs {
  /** For `inspect` (`--authfile`, `--tls-verify`) or `copy` (`--src-authfile`, `--src-tls-verify`). */
  args: (prefix: '' | 'src-') => string[];
  cleanup: () => Promise<void>;
}

/** Auth and TLS flags for `ref`: an explicit USER:PASSWORD (as a temp auth file), an auth file, or ~/.docker/config.json when present. */
export async function authArgs(ref: ImageRef, tmpDir: string, auth?: RegistryAuth, authFile?: string | null): Promise<AuthArgs> {
  if (ref.kind !== 'registry') return { args: () => [], cleanup: async () => {} };
  let file: string | null = null;
  let temp: string | null = null;
  if (auth) {
    temp = path.join(tmpDir, `auth-${randomBytes(6).toString('hex')}.json`);
    const token = Buffer.from(`${auth.username}:${auth.password}`).toString('base64');
    await writeFile(temp, JSON.stringify({ auths: { [ref.registry]: { auth: token } } }), { mode: 0o600, flag: 'wx' });
    file = temp;
  } else if (authFile !== undefined) file = authFile;
  else {
    const docker = path.join(os.homedir(), '.docker/config.json');
    if (existsSync(docker)) file = docker;
  }
  return {
    args: (prefix) => [...(file ? [`--${prefix}authfile`, file] : []), ...(ref.tls ? [] : [`--${prefix}tls-verify=false`])],
    cleanup: async () => {
      if (temp) await rm(temp, { force: true });
    },
  };
}

/** Map a failed `umoci unpack`. */
export function umociError(stderr: string, layout: string): ThawError {
  const msg = stderr.trim().split('\n').slice(-5).join('\n');
  const details = { layout, stderr: stderr.trim().split('\n').slice(-20).join('\n') };
  if (/cannot parse user spec|unable to find (user|group)|no matching entries in (passwd|group) file/i.test(msg)) {
    return new ThawError('IMAGE_USER_UNKNOWN', `the image's User cannot be resolved: ${msg}`, { details });
  }
  if (/no space left|ENOSPC|disk quota/i.test(msg)) return new ThawError('IMAGE_UNPACK_FAILED', `umoci unpack ran out of space: ${msg}`, { details });
  if (/mediatype|media type|unsupported|invalid tar|archive\/tar|gzip/i.test(msg)) return new ThawError('IMAGE_INVALID', `umoci cannot unpack the image: ${msg}`, { details });
  if (/verified reader|digest mismatch|checksum mismatch|expected digest/i.test(msg)) return new ThawError('IMAGE_DIGEST_MISMATCH', `a blob does not match its digest: ${msg}`, { details });
  return new ThawError('IMAGE_UNPACK_FAILED', `umoci unpack failed: ${msg}`, { details });
}
