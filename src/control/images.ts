// Deploy images for remote nodes: the control plane builds each deploy's disk
// image once and serves it zstd-compressed (`GET /v1/apps/NAME/deploys/ID/image`);
// a node fetches it on its first wake of that deploy (src/node/images.ts).
import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { ThawError } from '../errors.ts';

/** The image compressed on the fly (a mostly empty ext4 image shrinks to its used blocks). */
export async function streamImage(file: string): Promise<{ stream: Readable; bytes: number }> {
  const st = await stat(file).catch((err) => {
    throw new ThawError('NOT_FOUND', `deploy image ${file} is gone`, { cause: err });
  });
  const z = spawn('zstd', ['-q', '-1', '-T0', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  z.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
  z.once('error', (e) => z.stdout.destroy(new ThawError('HOST_MISSING_TOOL', `cannot run zstd: ${e.message}`, { cause: e })));
  z.once('close', (code) => {
    if (code) z.stdout.destroy(new ThawError('INTERNAL', `zstd failed on ${file}: ${err.trim()}`));
  });
  z.stdout.once('close', () => z.kill());
  return { stream: z.stdout, bytes: st.size };
}
