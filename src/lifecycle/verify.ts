// Seed identity on the hot path. A full SHA-256 check of every file runs when
// a seed is created (bake) or lands on a node (pull); it then records each
// file's inode, size and mtime in .verified.json (node-local, never packed).
// At wake, a stat of each file must match that record (cheap); any difference
// (a rewritten, replaced or touched file) triggers the full check again, and
// a mismatch refuses the seed. Seed files are read-only (0444) on disk.
import { PROTOCOL_VERSION } from '../wire/agent.ts';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { readManifest, verifySeedFull } from '../seed/files.ts';
import { SEED_FILES, type Manifest } from '../seed/manifest.ts';

type Identity = Record<string, { ino: number; size: number; mtimeMs: number; ctimeMs: number }>;

async function identity(dir: string): Promise<Identity> {
  const out: Identity = {};
  for (const f of [...SEED_FILES, 'manifest.json']) {
    const st = await stat(path.join(dir, f));
    out[f] = { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs }; // ctime cannot be set back by a writer
  }
  return out;
}

export async function writeVerified(dir: string): Promise<void> {
  await writeFile(path.join(dir, '.verified.json'), JSON.stringify(await identity(dir)));
}

/**
 * Load the manifest and make sure the seed's files are the ones that were
 * verified. Returns how it was checked: 'identity' (stat only) or 'full'.
 */
export async function checkSeed(
  dir: string,
  expect: { kernelSha256: string; initrdSha256: string; driver: string; accel: string },
): Promise<{ manifest: Manifest; check: 'identity' | 'full' }> {
  const manifest = await readManifest(dir);
  if (manifest.kernel_sha256 !== expect.kernelSha256 || manifest.initrd_sha256 !== expect.initrdSha256) {
    throw new ThawError('SEED_MISMATCH', 'seed was baked with another guest kernel or initramfs');
  }
  if (manifest.agent_protocol !== PROTOCOL_VERSION) throw new ThawError('SEED_MISMATCH', `seed's guest agent speaks protocol ${manifest.agent_protocol}, this host ${PROTOCOL_VERSION}`);
  if (manifest.driver !== expect.driver) throw new ThawError('SEED_MISMATCH', `seed was baked by the ${manifest.driver} driver`);
  if (manifest.accel !== expect.accel) throw new ThawError('SEED_MISMATCH', `seed was baked under ${manifest.accel}, this host runs ${expect.accel}`);
  let now: Identity;
  try {
    now = await identity(dir);
  } catch (err) {
    throw new ThawError('SEED_CORRUPT', `seed file missing: ${(err as Error).message}`, { cause: err });
  }
  const recorded = await readFile(path.join(dir, '.verified.json'), 'utf8')
    .then((t) => JSON.parse(t) as Identity)
    .catch(() => null);
  if (recorded && JSON.stringify(recorded) === JSON.stringify(now)) return { manifest, check: 'identity' };
  await verifySeedFull(dir, manifest);
  await writeVerified(dir);
  return { manifest, check: 'full' };
}
