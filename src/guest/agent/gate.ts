// The liveness gate, run right after a thaw and before any request is routed.
// A plain write/fsync/read round trip can pass on a mismatched disk (the page
// cache in the memory image answers). So the gate also reads back the canary
// written at bake time with O_DIRECT, straight from the attached disk, and
// compares it with the hash recorded in the manifest; and it scans the kernel
// log for filesystem errors logged since the agent started (after the bake's
// scrub). Everything runs inside the agent: right after a restore every exec
// pays for QEMU re-translating its code, so the gate spawns nothing.
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, fsyncSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { CANARY_PATH, type GateResult } from '../../wire/agent.ts';

const PROBE = '/var/lib/thaw/gate.probe';
const BLOCK = 4096;
export const FS_ERROR_RE = /EXT4-fs error|EXT4-fs warning|I\/O error|Buffer I\/O error|failed checksum|JBD2: .*(error|abort)|EXT4-fs .*(corrupt|abort)|blk_update_request/i;

// O_DIRECT needs a buffer aligned to the disk's logical block size, and JS
// cannot ask for an aligned address. So over-allocate once and find the
// offset the kernel accepts (misaligned attempts fail with EINVAL before any
// I/O); the offset stays valid for the life of the buffer.
const big = Buffer.allocUnsafeSlow(BLOCK * 3);
let alignedAt = -1;

function aligned(): Buffer {
  return big.subarray(alignedAt, alignedAt + BLOCK);
}

function directRead(path: string): Buffer {
  const fd = openSync(path, constants.O_RDONLY | constants.O_DIRECT);
  try {
    if (alignedAt < 0) {
      for (let off = 0; off < BLOCK; off += 16) {
        try {
          readSync(fd, big, off, BLOCK, 0);
          alignedAt = off;
          break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        }
      }
      if (alignedAt < 0) throw new Error('no aligned buffer offset accepted by O_DIRECT');
      return Buffer.from(aligned());
    }
    const n = readSync(fd, big, alignedAt, BLOCK, 0);
    return Buffer.from(big.subarray(alignedAt, alignedAt + n));
  } finally {
    closeSync(fd);
  }
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function canaryCheck(expected: string | null): boolean | null {
  if (expected === null) return null;
  try {
    return sha(directRead(CANARY_PATH)) === expected;
  } catch {
    return false;
  }
}

function roundTrip(): boolean {
  try {
    const data = randomBytes(BLOCK);
    // Make sure the probe exists (buffered), then find alignment with a direct read if needed.
    const fd0 = openSync(PROBE, 'w', 0o600);
    writeSync(fd0, data);
    fsyncSync(fd0);
    closeSync(fd0);
    if (alignedAt < 0) directRead(PROBE);
    const fresh = randomBytes(BLOCK);
    fresh.copy(big, alignedAt);
    const fd = openSync(PROBE, constants.O_WRONLY | constants.O_DIRECT);
    try {
      writeSync(fd, big, alignedAt, BLOCK, 0);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    return directRead(PROBE).equals(fresh);
  } catch {
    return false;
  } finally {
    rmSync(PROBE, { force: true });
  }
}

// The kernel log, read from /dev/kmsg. Opened when the agent starts (right
// after the bake's scrub checked and cleared the log); the open file keeps its
// position through the snapshot, so the gate reads only newer records.
let kmsg = -1;
const kbuf = Buffer.alloc(8192);

function readKmsg(): string[] {
  const out: string[] = [];
  if (kmsg < 0) return out;
  for (;;) {
    try {
      const n = readSync(kmsg, kbuf, 0, kbuf.length, null);
      if (n <= 0) break;
      const rec = kbuf.toString('utf8', 0, n);
      out.push(rec.slice(rec.indexOf(';') + 1).trim());
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EPIPE') continue; // records overwritten; keep reading
      break; // EAGAIN: nothing more
    }
  }
  return out;
}

export function openKernelLog(): void {
  try {
    kmsg = openSync('/dev/kmsg', constants.O_RDONLY | constants.O_NONBLOCK);
    readKmsg(); // skip what is already there
  } catch {
    kmsg = -1;
  }
}

/** Filesystem errors in the kernel log since the agent started (or since the last call). */
export function kernelFsErrors(): string[] {
  return readKmsg().filter((l) => FS_ERROR_RE.test(l)).slice(0, 20);
}

export function runGate(canarySha256: string | null): GateResult {
  const t0 = Date.now();
  const canary_ok = canaryCheck(canarySha256);
  const roundtrip_ok = roundTrip();
  // Scan the log after the disk was touched, so errors the reads caused are in it.
  const fs_errors = kernelFsErrors();
  const reasons: string[] = [];
  if (canary_ok === false) reasons.push('canary written at bake time does not read back from the attached disk');
  if (!roundtrip_ok) reasons.push('write/fsync/direct-read round trip failed');
  if (fs_errors.length > 0) reasons.push(`kernel log has ${fs_errors.length} filesystem error(s): ${fs_errors[0]}`);
  return { ok: reasons.length === 0, canary_ok, roundtrip_ok, fs_errors, ms: Date.now() - t0, reason: reasons.length ? reasons.join('; ') : null };
}
