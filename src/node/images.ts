// Deploy images on a `thaw node`: fetched from the control plane on the first
// wake of a deploy (zstd stream, written sparse), kept as
// DATA/node/images/APP@DEPLOY.img; older images of the app are deleted then.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { request, type Dispatcher } from 'undici';
import { errorFromBody } from '../http/errors.ts';
import { ThawError } from '../errors.ts';
import type { ImageSource } from './agent.ts';

export class ImageFetcher implements ImageSource {
  private readonly inflight = new Map<string, Promise<string>>();

  /** `dispatcher`: how to reach the control plane (its TLS trust); default undici's global one. */
  constructor(private readonly dir: string, private readonly controlUrl: string, private readonly token: string, private readonly dispatcher?: Dispatcher) {}

  private file(app: string, deployId: string): string {
    return path.join(this.dir, `${app}@${deployId}.img`);
  }

  ensure(app: string, deployId: string): Promise<string> {
    const file = this.file(app, deployId);
    if (existsSync(file)) return Promise.resolve(file);
    let p = this.inflight.get(file);
    if (!p) {
      p = this.fetch(app, deployId, file).finally(() => this.inflight.delete(file));
      this.inflight.set(file, p);
    }
    return p;
  }

  private async fetch(app: string, deployId: string, file: string): Promise<string> {
    await mkdir(this.dir, { recursive: true });
    const tmp = `${file}.partial-${process.pid}`;
    try {
      const res = await request(`${this.controlUrl}/v1/apps/${app}/deploys/${deployId}/image`, { headers: { authorization: `Bearer ${this.token}` }, ...(this.dispatcher ? { dispatcher: this.dispatcher } : {}) }).catch((err: unknown) => {
        // Not a fault of the app or of Thaw's code: this node cannot reach the control plane now.
        throw new ThawError('CONTROL_UNREACHABLE', `node could not fetch the image of ${app} (${deployId}) from the control plane at ${this.controlUrl}: ${(err as Error).message}`, { cause: err });
      });
      if (res.statusCode !== 200) throw errorFromBody(res.statusCode, await res.body.json().catch(() => null));
      const want = Number(res.headers['x-image-bytes']);
      // zstd writes its output sparse: the zero blocks of the image take no space here either.
      const z = spawn('zstd', ['-q', '-d', '-f', '-o', tmp], { stdio: ['pipe', 'ignore', 'pipe'] });
      let err = '';
      z.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
      const exited = new Promise<number | null>((resolve, reject) => {
        z.once('close', resolve);
        z.once('error', (e) => reject(new ThawError('HOST_MISSING_TOOL', `cannot run zstd: ${e.message}`, { cause: e })));
      });
      exited.catch(() => {});
      await pipeline(res.body, z.stdin);
      const code = await exited;
      if (code !== 0) throw new ThawError('INTERNAL', `unpacking the image of ${app} failed${/No space/.test(err) ? ' (disk full)' : ''}: ${err.trim()}`);
      const got = (await stat(tmp)).size;
      if (Number.isFinite(want) && got !== want) throw new ThawError('INTERNAL', `image of ${app} arrived with ${got} bytes, expected ${want}`);
      await chmod(tmp, 0o444);
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err instanceof ThawError ? err : new ThawError('INTERNAL', `fetching the image of ${app} (${deployId}) failed: ${(err as Error).message}`, { cause: err });
    }
    // Older deploys of this app are not woken again.
    for (const f of await readdir(this.dir)) {
      if (f.startsWith(`${app}@`) && path.join(this.dir, f) !== file && !f.includes('.partial-')) await rm(path.join(this.dir, f), { force: true });
    }
    return file;
  }

  async remove(app: string): Promise<void> {
    for (const f of await readdir(this.dir).catch(() => [] as string[])) if (f.startsWith(`${app}@`)) await rm(path.join(this.dir, f), { force: true });
  }

  /** Remove partial downloads a killed predecessor left. */
  async recover(): Promise<void> {
    for (const f of await readdir(this.dir).catch(() => [] as string[])) if (f.includes('.partial-')) await rm(path.join(this.dir, f), { force: true });
  }
}
