// A deploy's build step: the uploaded tarball is extracted with strict checks,
// the app folder validated and turned into a read-only sparse ext4 image
// (`mkfs.ext4 -d`, no loop mounts). The source folder is removed either way;
// the image only when the build fails.
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { buildAppImage } from '../image/build.ts';
import { extractAppTarball } from '../image/tarball.ts';
import type { RunConfig } from '../wire/run.ts';

export interface BuildLimits {
  dataDir: string;
  baseRootfs: string;
  diskMiB: number;
  maxAppBytes: number;
  maxTarballBytes: number;
}

export const appRoot = (dataDir: string, app: string) => path.join(dataDir, 'apps', app);
export const imagePath = (dataDir: string, app: string, deployId: string) => path.join(appRoot(dataDir, app), `${deployId}.img`);

export async function buildDeploy(o: BuildLimits, app: string, tarball: Readable, progress: (line: string) => void): Promise<{ deployId: string; image: string; bytesAllocated: number; run: RunConfig }> {
  const deployId = `d-${Date.now().toString(36)}-${randomUUID().slice(0, 6)}`;
  const root = appRoot(o.dataDir, app);
  const src = path.join(root, `src-${deployId}`);
  const image = imagePath(o.dataDir, app, deployId);
  try {
    await mkdir(root, { recursive: true });
    progress('receiving app tarball');
    const x = await extractAppTarball(tarball, src, { maxBytes: o.maxTarballBytes });
    progress(`unpacked ${x.files} files (${x.bytes} bytes); building disk image`);
    const built = await buildAppImage({ appDir: src, baseRootfs: o.baseRootfs, out: image, diskMiB: o.diskMiB, maxAppBytes: o.maxAppBytes, log: progress });
    await chmod(image, 0o444);
    return { deployId, image, bytesAllocated: built.bytesAllocated, run: built.run };
  } catch (err) {
    await rm(image, { force: true });
    throw err;
  } finally {
    await rm(src, { recursive: true, force: true });
  }
}
