// The liveness gate, run right after a thaw and before any request is routed.
// A plain write/fsync/read round trip can pass on a mismatched disk (the page
// cache in the memory image answers). So the gate also reads back the canary
// written at bake time with O_DIRECT, straight from the attached disk, and
// compares it with the hash recorded in the manifest; and it scans the kernel
// log for filesystem errors.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { CANARY_PATH, type GateResult } from '../../wire/agent.ts';

const PROBE = '/var/lib/thaw/gate.probe';
export const FS_ERROR_RE = /EXT4-fs error|EXT4-fs warning|I\/O error|Buffer I\/O error|failed checksum|JBD2: .*(error|abort)|EXT4-fs .*(corrupt|abort)|blk_update_request/i;

function run(argv: string[], input?: Buffer): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', (e) => resolve({ code: -1, stdout: Buffer.alloc(0), stderr: String(e) }));
    p.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: err }));
    p.stdin.end(input);
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function canaryCheck(expected: string | null): Promise<boolean | null> {
  if (expected === null) return null;
  const r = await run(['dd', `if=${CANARY_PATH}`, 'iflag=direct', 'bs=4096', 'count=1']);
  return r.code === 0 && sha(r.stdout) === expected;
}

async function roundTrip(): Promise<boolean> {
  const data = randomBytes(4096);
  const w = await run(['dd', `of=${PROBE}`, 'oflag=direct', 'conv=fsync', 'bs=4096', 'count=1'], data);
  if (w.code !== 0) return false;
  const r = await run(['dd', `if=${PROBE}`, 'iflag=direct', 'bs=4096', 'count=1']);
  rmSync(PROBE, { force: true });
  return r.code === 0 && r.stdout.equals(data);
}

export async function kernelFsErrors(): Promise<string[]> {
  const r = await run(['dmesg']);
  return r.stdout.toString('utf8').split('\n').filter((l) => FS_ERROR_RE.test(l)).slice(0, 20);
}

export async function runGate(canarySha256: string | null): Promise<GateResult> {
  const t0 = Date.now();
  const [canary_ok, roundtrip_ok] = await Promise.all([canaryCheck(canarySha256), roundTrip()]);
  // Scan the log after the disk was touched, so errors the reads caused are in it.
  const fs_errors = await kernelFsErrors();
  const reasons: string[] = [];
  if (canary_ok === false) reasons.push('canary written at bake time does not read back from the attached disk');
  if (!roundtrip_ok) reasons.push('write/fsync/direct-read round trip failed');
  if (fs_errors.length > 0) reasons.push(`kernel log has ${fs_errors.length} filesystem error(s)`);
  return { ok: reasons.length === 0, canary_ok, roundtrip_ok, fs_errors, ms: Date.now() - t0, reason: reasons.length ? reasons.join('; ') : null };
}
