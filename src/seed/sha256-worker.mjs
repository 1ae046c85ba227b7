// Worker thread for src/seed/files.ts: SHA-256 of one file, so the large seed
// files (memory image, disk) hash in parallel on separate cores. Plain
// JavaScript so it loads without the TypeScript loader.
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { parentPort, workerData } from 'node:worker_threads';

const CHUNK = 4 * 1024 * 1024;
const hash = createHash('sha256');
const fh = await open(workerData.file, 'r');
try {
  const buf = Buffer.allocUnsafe(CHUNK);
  for (;;) {
    const { bytesRead } = await fh.read(buf, 0, CHUNK, null);
    if (bytesRead === 0) break;
    hash.update(bytesRead === CHUNK ? buf : buf.subarray(0, bytesRead));
  }
} finally {
  await fh.close();
}
parentPort.postMessage(hash.digest('hex'));
