// Node's on-disk compile cache (module.enableCompileCache, Node >= 22.1) for
// Node-folder apps. Every thaw starts the app as a new process, which would
// compile every module of the app again, under TCG at 10-50x native cost.
// With NODE_COMPILE_CACHE set, the cold boot's app run writes V8 code cache
// for the modules it loaded into COMPILE_CACHE_DIR on the VM's root disk; the
// bake copies that disk into the seed (a matched pair with the memory image:
// scrub syncs before the pause), and each thaw's new process reads it.
// - On the root disk, not /tmp (a tmpfs that scrub empties before the bake)
//   and not the app's volume (not part of the seed, and shared by every
//   version of the app).
// - Node validates every entry itself: the folder is named by Node's version,
//   arch, and V8's cache tag (V8 version, V8 flags, CPU features), and each
//   entry carries a hash of its module's source, so a stale or foreign entry
//   is recompiled from source, never run.
// - It holds bytecode of the app's own source files (already on the disk), no
//   runtime values: no env, no secret.
// - Node writes new entries at a normal exit: at the bake's SIGTERM for an app
//   that exits on it (examples/hello, Next.js). An app that dies on SIGTERM
//   (no handler) never gets there; it can opt in to the preload below, which
//   flushes them 3, 10, 30 and 60 s after the start (module.flushCompileCache,
//   Node >= 22.10): NODE_OPTIONS=--require=COMPILE_CACHE_PRELOAD. The preload
//   is not on by default: in the interleaved thaw-breakdown runs it cost the
//   demo's thaw more (the CommonJS loader's path, translated again by TCG
//   after every restore) than the cache saved it (docs/BENCHMARKS.md).
// Apps opt out with NODE_DISABLE_COMPILE_CACHE=1 in their env.

/** The compile cache folder on the guest's root disk. */
export const COMPILE_CACHE_DIR = '/var/cache/thaw/node-compile-cache';

/** The flush preload in every Node base root (src/guest/assets.ts); apps opt in with NODE_OPTIONS. */
export const COMPILE_CACHE_PRELOAD = '/usr/local/lib/thaw/compile-cache.cjs';

export const COMPILE_CACHE_PRELOAD_SOURCE = `'use strict';
// Thaw (src/guest/compile-cache.ts): write Node's compile cache entries to
// disk 3, 10, 30 and 60 s after the start, so a snapshot taken
// while the app runs carries them even if the app never exits normally.
const m = require('node:module');
if (typeof m.flushCompileCache === 'function' && typeof m.getCompileCacheDir === 'function' && m.getCompileCacheDir()) {
  for (const ms of [3000, 10000, 30000, 60000]) setTimeout(() => m.flushCompileCache(), ms).unref();
}
`;

/** The env a Node-folder app gets for the compile cache (the app's own env wins). */
export const COMPILE_CACHE_ENV: Readonly<Record<string, string>> = {
  NODE_COMPILE_CACHE: COMPILE_CACHE_DIR,
};
