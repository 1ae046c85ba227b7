// Native modules (`*.node`) in a shipped node_modules must match the ABI
// (NODE_MODULE_VERSION) of the Node the app runs on. A module built against
// Node's C++ API exports `node_register_module_v<ABI>`; an N-API module
// exports `napi_register_module_v1` only and runs on any version.
import { open, readFile, readdir } from 'node:fs/promises';
import path from 'node:path';

/** NODE_MODULE_VERSION of a Node runtime folder (from include/node/node_version.h). */
export async function moduleVersionOf(nodeDir: string): Promise<number> {
  const h = await readFile(path.join(nodeDir, 'include', 'node', 'node_version.h'), 'utf8');
  const m = /#define NODE_MODULE_VERSION (\d+)/.exec(h);
  if (!m) throw new Error(`no NODE_MODULE_VERSION in ${nodeDir}`);
  return Number(m[1]);
}

/** The ABI a `.node` file was built for, or null for N-API (or unknown) modules. */
export async function abiOfAddon(file: string): Promise<number | null> {
  const fh = await open(file, 'r');
  try {
    const buf = await fh.readFile();
    const m = /node_register_module_v(\d+)/.exec(buf.toString('latin1'));
    return m ? Number(m[1]) : null;
  } finally {
    await fh.close();
  }
}

/** `*.node` files under `dir/node_modules` built for another ABI than `abi` (paths relative to dir). */
export async function mismatchedAddons(dir: string, abi: number): Promise<{ file: string; abi: number }[]> {
  const out: { file: string; abi: number }[] = [];
  const stack = ['node_modules'];
  while (stack.length > 0) {
    const rel = stack.pop()!;
    const entries = await readdir(path.join(dir, rel), { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      const r = `${rel}/${e.name}`;
      if (e.isDirectory()) stack.push(r);
      else if (e.isFile() && e.name.endsWith('.node')) {
        const a = await abiOfAddon(path.join(dir, r));
        if (a !== null && a !== abi) out.push({ file: r, abi: a });
      }
    }
  }
  return out;
}
