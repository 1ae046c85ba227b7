// Builds (or finds in the cache) the web dashboard and prints where it is.
import { ensureWeb } from '../src/api/web-assets.ts';

const t0 = Date.now();
const dir = await ensureWeb((l) => console.log(`setup: ${l}`));
console.log(`setup: dashboard ready in ${dir} (${Date.now() - t0} ms)`);
