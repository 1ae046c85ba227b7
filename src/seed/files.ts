// Seed file helpers: SHA-256 of (sparse) files, allocated size, and verifying
// a seed folder against its manifest.
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { ThawError } from '../errors.ts';
import { Manifest, MANIFEST_VERSION, SEED_FILES, type FileEntry } from './manifest.ts';

/** Files at least this large are hashed on a worker thread (several hash in parallel). */
const WORKER_MIN_BYTES = 64 * 1024 * 1024;

/** SHA-256 of a file's full content (holes read as zeros); large files stream on a worker thread. */
export async function sha256File(file: string): Promise<string> {
  const st = await stat(file);
  return st.size >= WORKER_MIN_BYTES ? sha256OnWorker(file) : sha256Here(file);
}

function sha256OnWorker(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL('./sha256-worker.mjs', import.meta.url), { workerData: { file }, execArgv: [] });
    let done = false;
    w.once('message', (hex: string) => {
      done = true;
      resolve(hex);
    });
    w.once('error', reject);
    w.once('exit', (code) => {
      if (!done) reject(new Error(`hash worker for ${file} exited with ${code}`));
    });
  });
}

/** Small files (manifests, device state) are read whole. */
async function sha256Here(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

export async function fileEntry(file: string): Promise<FileEntry> {
  const [st, sha256] = await Promise.all([stat(file), sha256File(file)]);
  return { bytes: st.size, allocated: st.blocks * 512, sha256 };
}

export async function readManifest(seedDir: string): Promise<Manifest> {
  let raw: string;
  try {
    raw = await readFile(path.join(seedDir, 'manifest.json'), 'utf8');
  } catch (err) {
    throw new ThawError('SEED_MISSING', `no manifest in ${seedDir}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (err) {
    throw new ThawError('SEED_CORRUPT', `manifest of ${seedDir} is not JSON`, { cause: err });
  }
  const version = (json as { version?: unknown } | null)?.version;
  if (typeof version === 'number' && version !== MANIFEST_VERSION) {
    throw new ThawError('SEED_MISMATCH', `seed ${path.basename(seedDir)} was made by another Thaw (manifest version ${version}, this one reads ${MANIFEST_VERSION})`);
  }
  const parsed = Manifest.safeParse(json);
  if (!parsed.success) throw new ThawError('SEED_CORRUPT', `manifest of ${seedDir} is invalid: ${parsed.error.message}`);
  return parsed.data;
}

/**
 * Full check: every file's size and SHA-256 match the manifest. Used when a
 * seed is created or lands on a node (after a pull); costs a read of every byte.
 */
export async function verifySeedFull(seedDir: string, manifest: Manifest): Promise<void> {
  await Promise.all(
    SEED_FILES.map(async (name) => {
      const want = manifest.files[name];
      const file = path.join(seedDir, name);
      const st = await stat(file).catch((err) => {
        throw new ThawError('SEED_CORRUPT', `seed file ${name} is missing`, { cause: err });
      });
      if (st.size !== want.bytes) throw new ThawError('SEED_CORRUPT', `seed file ${name} has ${st.size} bytes, manifest says ${want.bytes}`);
      const got = await sha256File(file);
      if (got !== want.sha256) throw new ThawError('SEED_CORRUPT', `seed file ${name} SHA-256 ${got} does not match manifest ${want.sha256}`);
    }),
  );
}
