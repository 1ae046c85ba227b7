// Builds (or finds in the cache) the guest assets and prints where they are.
import { ensureAssets } from '../src/guest/assets.ts';

const t0 = Date.now();
const a = await ensureAssets((l) => console.log(`setup: ${l}`));
console.log(`setup: guest assets ready in ${a.dir} (${Date.now() - t0} ms)`);
