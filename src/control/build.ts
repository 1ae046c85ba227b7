// A deploy's build step: the uploaded tarball is extracted with strict checks,
// the app folder validated and turned into a read-only sparse ext4 image
// (`mkfs.ext4 -d`, no loop mounts). The source folder is removed either way;
// the image only when the build fails.
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { buildAppImage, type BaseRootfsFor } from '../image/build.ts';
import { makeExt4 } from '../image/ext4.ts';
import { pullImage } from '../image/oci.ts';
import { extractAppTarball } from '../image/tarball.ts';
import type { ImageSource } from './types.ts';
import type { RunConfig } from '../wire/run.ts';

export interface BuildLimits {
  dataDir: string;
  baseRootfs: string | BaseRootfsFor;
  diskMiB: number;
  maxAppBytes: number;
  maxTarballBytes: number;
}

export const appRoot = (dataDir: string, app: string) => path.join(dataDir, 'apps', app);
export const imagePath = (dataDir: string, app: string, deployId: string) => path.join(appRoot(dataDir, app), `${deployId}.img`);

/** Pull an OCI image (cached by digest) and write its root as the deploy's ext4 image. */
export async function buildImageDeploy(o: BuildLimits, app: string, src: ImageSource, progress: (line: string) => void): Promise<{ deployId: string; image: string; bytesAllocated: number; run: RunConfig }> {
  const deployId = `d-${Date.now().toString(36)}-${randomUUID().slice(0, 6)}`;
  const image = imagePath(o.dataDir, app, deployId);
  try {
    await mkdir(appRoot(o.dataDir, app), { recursive: true });
    const pulled = await pullImage(src.image, {
      cacheDir: path.join(o.dataDir, 'oci'),
      ...(src.auth ? { auth: src.auth } : {}),
      ...(src.command ? { command: src.command } : {}),
      maxBytes: o.maxAppBytes,
      onProgress: (p) => progress(`${p.phase}: ${p.message}`),
    });
    progress(`image ${pulled.name} ${pulled.digest}${pulled.cached ? ' (cached)' : ''}, ${pulled.bytes} bytes; building disk image`);
    await makeExt4(pulled.rootfs, image, o.diskMiB, progress);
    await chmod(image, 0o444);
    const st = await stat(image);
    return { deployId, image, bytesAllocated: st.blocks * 512, run: { ...pulled.run, port: src.port ?? pulled.port ?? pulled.run.port } };
  } catch (err) {
    await rm(image, { force: true });
    throw err;
  }
}

export async function buildDeploy(o: BuildLimits, app: string, tarball: Readable, progress: (line: string) => void, build?: boolean): Promise<{ deployId: string; image: string; bytesAllocated: number; run: RunConfig }> {
  const deployId = `d-${Date.now().toString(36)}-${randomUUID().slice(0, 6)}`;
  const root = appRoot(o.dataDir, app);
  const src = path.join(root, `src-${deployId}`);
  const image = imagePath(o.dataDir, app, deployId);
  try {
    await mkdir(root, { recursive: true });
    progress('receiving app tarball');
    const x = await extractAppTarball(tarball, src, { maxBytes: o.maxTarballBytes });
    progress(`unpacked ${x.files} files (${x.bytes} bytes); building disk image`);
    const built = await buildAppImage({ appDir: src, baseRootfs: o.baseRootfs, out: image, diskMiB: o.diskMiB, maxAppBytes: o.maxAppBytes, log: progress, ...(build ? { build: true } : {}) });
    await chmod(image, 0o444);
    return { deployId, image, bytesAllocated: built.bytesAllocated, run: built.run };
  } catch (err) {
    await rm(image, { force: true });
    throw err;
  } finally {
    await rm(src, { recursive: true, force: true });
  }
}
