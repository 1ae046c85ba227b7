// What npm, pnpm and yarn write deploys: each real tool (the pinned releases
// from the npm registry, run by the pinned Node) installs a small app, and
// the tree that comes out of pack -> extract is the tree that went in:
// types, modes, contents, symlink targets and hard-link groups. Package
// tarballs go through caches under the Thaw cache, so later runs download
// little.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile as execFileCb } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { cacheRoot } from '../guest/cache.ts';
import { ensureNodeRuntime } from '../guest/node-runtime.ts';
import { ensureTool, TOOLS, type PackageManager } from '../guest/toolchain.ts';
import { yarn4Env } from '../../test/helpers/npmapp.ts';
import { packAppDir } from './pack.ts';
import { extractAppTarball } from './tarball.ts';

const execFile = promisify(execFileCb);

/**
 * Every entry: kind, mode, content hash or link target, and its hard-link
 * group inside the tree (the first path sharing its inode; links to files
 * outside the tree, such as pnpm's store, are plain files there).
 */
async function snapshot(root: string): Promise<{ entries: Map<string, string>; outsideLinks: number }> {
  const out = new Map<string, string>();
  const inodes = new Map<number, string[]>();
  const nlinks = new Map<number, number>();
  const walk = async (rel: string): Promise<void> => {
    for (const e of (await readdir(path.join(root, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const p = path.join(root, r);
      const st = await lstat(p);
      const mode = (st.mode & 0o7777).toString(8);
      if (e.isDirectory()) {
        out.set(r, `dir ${mode}`);
        await walk(r);
      } else if (e.isSymbolicLink()) out.set(r, `link ${await readlink(p)}`);
      else {
        inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), r]);
        nlinks.set(st.ino, st.nlink);
        out.set(r, `file ${mode} ${createHash('sha256').update(await readFile(p)).digest('hex').slice(0, 16)} #${st.ino}`);
      }
    }
  };
  await walk('');
  for (const [k, v] of out) {
    const m = / #(\d+)$/.exec(v);
    if (!m) continue;
    const paths = inodes.get(Number(m[1]))!;
    out.set(k, v.replace(/ #\d+$/, paths.length > 1 ? ` linked:${paths[0]}` : ''));
  }
  const outsideLinks = [...inodes].filter(([ino, paths]) => nlinks.get(ino)! > paths.length).length;
  return { entries: out, outsideLinks };
}

const ADD: Record<PackageManager, (cache: string) => string[]> = {
  npm: (cache) => ['install', 'ms@2.1.3', 'semver@7.6.3', '--no-audit', '--no-fund', `--cache=${cache}`],
  pnpm: (cache) => ['add', 'ms@2.1.3', 'semver@7.6.3', `--store-dir=${cache}`, '--config.package-import-method=hardlink'],
  yarn: (cache) => ['add', 'ms@2.1.3', 'semver@7.6.3', `--cache-folder=${cache}`, '--non-interactive', '--no-progress'],
  // Yarn 4 takes its cache from the environment (yarn4Env) and its linker from .yarnrc.yml.
  yarn4: () => ['add', 'ms@2.1.3', 'semver@7.6.3'],
};

for (const pm of ['npm', 'pnpm', 'yarn', 'yarn4'] as const) {
  test(`a tree ${pm} installs comes through pack and extract unchanged`, async (t) => {
    const node = await ensureNodeRuntime(26);
    const tool = await ensureTool(pm);
    const d = await mkdtemp(path.join(os.tmpdir(), `thaw-i15-${pm}-`));
    t.after(() => rm(d, { recursive: true, force: true }));
    const app = path.join(d, 'app');
    await mkdir(app);
    await writeFile(path.join(app, 'package.json'), JSON.stringify({ name: `pm-${pm}`, version: '1.0.0', private: true, scripts: { start: 'node -e 0' } }));
    if (pm === 'yarn4') await writeFile(path.join(app, '.yarnrc.yml'), 'nodeLinker: node-modules\n');
    // The store/cache lives next to the app (same file system), so pnpm hard-links from it as it does on most hosts.
    const cache = path.join(cacheRoot(), 'test-pm', pm);
    await mkdir(cache, { recursive: true });
    await execFile(node.bin, [path.join(tool, TOOLS[pm].entry), ...ADD[pm](cache)], {
      cwd: app,
      env: { ...process.env, PATH: `${path.dirname(node.bin)}:${process.env.PATH ?? ''}`, npm_config_update_notifier: 'false', CI: 'true', ...(pm === 'yarn4' ? await yarn4Env(cache) : {}) },
      maxBuffer: 16 << 20,
    });
    // What node-gyp leaves: a hard link inside the folder.
    await mkdir(path.join(app, 'node_modules/native/build/Release'), { recursive: true });
    await writeFile(path.join(app, 'node_modules/native/build/Release/obj.node'), 'ELF', { mode: 0o755 });
    await execFile('ln', [path.join(app, 'node_modules/native/build/Release/obj.node'), path.join(app, 'node_modules/native/build/Release/native.node')]);

    const { entries: before, outsideLinks } = await snapshot(app);
    if (pm === 'pnpm') assert.ok(outsideLinks > 0, 'pnpm hard-linked files from its store (outside the folder): they travel as plain files');
    assert.ok([...before.keys()].some((k) => k.endsWith('semver/package.json')), `${pm} installed semver`);
    assert.ok([...before.entries()].some(([k, v]) => k.includes('.bin/semver') && (v.startsWith('link') || v.startsWith('file'))), `${pm} linked the bin`);
    const dest = path.join(d, 'out');
    await extractAppTarball(await packAppDir(app), dest, { maxBytes: 256 << 20 });
    const after = (await snapshot(dest)).entries;
    assert.deepEqual([...after.entries()], [...before.entries()]);
    const linked = [...after.values()].filter((v) => v.endsWith(' linked:node_modules/native/build/Release/native.node'));
    assert.equal(linked.length, 2, 'the hard link pair inside the folder is kept as a pair');
  });
}
