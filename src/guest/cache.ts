// Where Thaw caches what it builds or fetches for guests (assets, Node runtimes, test images).
import os from 'node:os';
import path from 'node:path';

export function cacheRoot(): string {
  return process.env.THAW_CACHE ?? path.join(os.homedir(), '.cache', 'thaw');
}
