// Builds the static guest agent (guest/agent/*.c) with the host's gcc against
// the static libsodium and jansson of Debian's -dev packages. No prebuilt
// binary: the asset cache is keyed by the hash of these sources.
import { createHash } from 'node:crypto';
import { execFile as execFileCb } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { ThawError } from '../errors.ts';

const execFile = promisify(execFileCb);
export const AGENT_SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'guest', 'agent');

/** The agent's source files (what build.sh compiles) and their combined hash. */
export async function agentSources(): Promise<{ files: string[]; hash: string }> {
  const files = (await readdir(AGENT_SRC)).filter((f) => /\.(c|h|sh)$/.test(f) && !f.startsWith('fuzz')).sort();
  const h = createHash('sha256');
  for (const f of files) h.update(`${f}\n`).update(await readFile(path.join(AGENT_SRC, f)));
  return { files, hash: h.digest('hex') };
}

/** Compile the agent to `out`. Errors: HOST_MISSING_TOOL (no gcc or -dev package), ASSETS_BUILD_FAILED. */
export async function buildAgent(out: string): Promise<void> {
  try {
    await execFile('bash', [path.join(AGENT_SRC, 'build.sh'), out], { maxBuffer: 8 << 20 });
  } catch (err) {
    const stderr = String((err as { stderr?: unknown }).stderr ?? '');
    if (/sodium\.h|jansson\.h|cannot find -l(sodium|jansson)|gcc: (command )?not found/.test(stderr)) {
      throw new ThawError('HOST_MISSING_TOOL', `building the guest agent needs gcc, libsodium-dev and libjansson-dev: ${stderr.trim().slice(-400)}`, { cause: err });
    }
    throw new ThawError('ASSETS_BUILD_FAILED', `compiling the guest agent failed: ${stderr.trim().slice(-800)}`, { cause: err });
  }
}
