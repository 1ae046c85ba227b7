// The Node build step, after the well-known Node buildpacks: when the app
// ships no node_modules (or the deploy asks for --build), install with the
// lockfile's package manager including devDependencies, run `build` when
// package.json has scripts.build, then prune devDependencies. Every step runs
// in the build sandbox (sandbox.ts) with the Node binary and headers the app
// will run on, so native modules match the runtime. The fetch step runs the
// package manager with scripts off and the network on; the steps that run
// the app's code (dependency install scripts, the app's lifecycle scripts,
// `build`) have no network. A shipped node_modules is used as it is, but
// native modules built for another ABI are refused (NODE_ABI_MISMATCH);
// `--build` rebuilds them (`npm rebuild`).
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { ensureTool, TOOLS, type PackageManager } from '../guest/toolchain.ts';
import { cacheRoot } from '../guest/cache.ts';
import { run, tail } from './exec.ts';
import { BUILD_UID, runSandboxed } from './sandbox.ts';
import { mismatchedAddons, moduleVersionOf } from './abi.ts';

export interface NodeBuildOpts {
  /** The staged app folder (a copy; changed in place). */
  appDir: string;
  /** The pinned Node runtime folder (bin/node, include/node) the app runs on. */
  nodeDir: string;
  nodeVersion: string;
  /** Build even though node_modules is shipped (`thaw deploy --build`). */
  force?: boolean;
  timeoutMs?: number;
  memoryBytes?: number;
  log: (line: string) => void;
}

export const BUILD_TIMEOUT_MS = 20 * 60_000;
export const BUILD_MEMORY_BYTES = 3 * 1024 ** 3;

/**
 * The package manager a folder's lockfile names: pnpm-lock.yaml, yarn.lock
 * (Yarn 1, or Yarn 4 when it is a Berry lockfile with `__metadata:`),
 * package-lock.json / npm-shrinkwrap.json, else npm. Yarn 2+ is built with
 * the node_modules linker only. Errors: BUILD_PNP_UNSUPPORTED (Plug'n'Play,
 * Yarn 2+'s default), BUILD_PM_UNSUPPORTED (the pnpm linker, or Yarn plugins,
 * which are app code the network-enabled fetch step would run).
 */
export async function packageManagerOf(appDir: string): Promise<{ pm: PackageManager; lockfile: string | null }> {
  const has = (f: string) => existsSync(path.join(appDir, f));
  if (has('pnpm-lock.yaml')) return { pm: 'pnpm', lockfile: 'pnpm-lock.yaml' };
  if (has('yarn.lock')) {
    const lock = await readFile(path.join(appDir, 'yarn.lock'), 'utf8');
    const berry = /^__metadata:/m.test(lock) || (!lock.includes('# yarn lockfile v1') && has('.yarnrc.yml'));
    if (!berry) return { pm: 'yarn', lockfile: 'yarn.lock' };
    const rc = await readFile(path.join(appDir, '.yarnrc.yml'), 'utf8').catch(() => '');
    const linker = /^nodeLinker:\s*["']?([\w-]+)/m.exec(rc)?.[1] ?? 'pnp';
    const details = { lockfile: 'yarn.lock', nodeLinker: linker };
    if (linker === 'pnp') {
      throw new ThawError('BUILD_PNP_UNSUPPORTED', `this Yarn project uses Plug'n'Play (nodeLinker ${JSON.stringify(linker)}${/^nodeLinker:/m.test(rc) ? '' : ', Yarn\'s default'}); add \`nodeLinker: node-modules\` to .yarnrc.yml, run \`yarn install\` and deploy again`, { details });
    }
    if (linker !== 'node-modules') {
      throw new ThawError('BUILD_PM_UNSUPPORTED', `Yarn's ${JSON.stringify(linker)} linker is not built by Thaw; set \`nodeLinker: node-modules\` in .yarnrc.yml`, { details });
    }
    if (/^plugins:/m.test(rc)) {
      throw new ThawError('BUILD_PM_UNSUPPORTED', 'this Yarn project loads Yarn plugins (`plugins:` in .yarnrc.yml): they are app code that would run while packages download, with network; remove them (Yarn 4 bundles the official ones) or deploy with node_modules', { details });
    }
    return { pm: 'yarn4', lockfile: 'yarn.lock' };
  }
  for (const f of ['package-lock.json', 'npm-shrinkwrap.json']) if (has(f)) return { pm: 'npm', lockfile: f };
  return { pm: 'npm', lockfile: null };
}

interface Step {
  what: string;
  argv: string[];
  network: boolean;
}

/** The steps of a build, in order (exported for tests). */
export function buildSteps(pm: PackageManager, lockfile: string | null, install: boolean, scripts: Record<string, unknown>): Step[] {
  const hasBuild = typeof scripts.build === 'string';
  const steps: Step[] = [];
  const npm = (what: string, network: boolean, ...args: string[]): Step => ({ what, argv: ['npm', ...args], network });
  if (install) {
    if (pm === 'npm') steps.push(npm('install (fetch)', true, lockfile ? 'ci' : 'install', '--include=dev', '--ignore-scripts', '--no-audit', '--no-fund'));
    if (pm === 'pnpm') steps.push({ what: 'install (fetch)', argv: ['pnpm', 'install', '--frozen-lockfile', '--prod=false', '--ignore-scripts', '--config.node-linker=hoisted'], network: true });
    if (pm === 'yarn') steps.push({ what: 'install (fetch)', argv: ['yarn', 'install', '--frozen-lockfile', '--production=false', '--ignore-scripts', '--non-interactive'], network: true });
    // Yarn 4: the lockfile as it is, no build scripts; the registry npm uses (Yarn's own default is another host).
    if (pm === 'yarn4') steps.push({ what: 'install (fetch)', argv: ['sh', '-c', 'grep -qs "^npmRegistryServer:" .yarnrc.yml || export YARN_NPM_REGISTRY_SERVER="$(npm config get registry)"; exec yarn install --immutable --mode=skip-build'], network: true });
    // The dependencies' install scripts (native modules) and the app's own, without network.
    steps.push(npm('install scripts', false, 'rebuild', '--foreground-scripts'));
    for (const s of ['preinstall', 'install', 'postinstall', 'prepare']) if (typeof scripts[s] === 'string') steps.push(npm(s, false, 'run', s));
  }
  else steps.push(npm('rebuild native modules', false, 'rebuild', '--foreground-scripts'));
  if (hasBuild) steps.push(npm('build', false, 'run', 'build'));
  const prune = npm('prune devDependencies', false, 'prune', '--omit=dev', '--no-audit', '--no-fund');
  // npm rewrites a yarn.lock it finds (in Yarn 1's format, even with --no-save): keep the app's own.
  if (pm === 'yarn' || pm === 'yarn4') prune.argv = ['sh', '-c', 'cp -p yarn.lock /tmp/yarn.lock.app && "$@" && cp -p /tmp/yarn.lock.app yarn.lock', 'sh', ...prune.argv];
  steps.push(prune);
  return steps;
}

async function chownTree(dir: string, uid: number): Promise<void> {
  const r = await run('chown', ['-R', '-h', `${uid}:${uid}`, dir]);
  if (r.code !== 0) throw new ThawError('IMAGE_BUILD_FAILED', `chown of the staged app failed: ${tail(r.stderr)}`);
}

/**
 * Build the staged app in place when it needs it. Returns false when nothing
 * ran (node_modules shipped, no --build; its native modules must then match
 * the runtime's ABI: NODE_ABI_MISMATCH). Errors: BUILD_FAILED (with the
 * log's tail in details.tail), BUILD_TIMEOUT, BUILD_OUT_OF_MEMORY,
 * BUILD_PNP_UNSUPPORTED, BUILD_PM_UNSUPPORTED, BUILD_SANDBOX_UNAVAILABLE.
 */
export async function buildNodeApp(o: NodeBuildOpts): Promise<boolean> {
  const install = !existsSync(path.join(o.appDir, 'node_modules'));
  if (!install && !o.force) {
    const abi = await moduleVersionOf(o.nodeDir);
    const bad = await mismatchedAddons(o.appDir, abi);
    if (bad.length > 0) {
      throw new ThawError('NODE_ABI_MISMATCH', `node_modules holds native modules built for another Node ABI than Node ${o.nodeVersion}'s ${abi}: ${bad.slice(0, 5).map((b) => `${b.file} (${b.abi})`).join(', ')}; deploy with --build to rebuild them`, {
        details: { expected: abi, modules: bad.slice(0, 50) },
      });
    }
    return false;
  }
  const pkg = JSON.parse(await readFile(path.join(o.appDir, 'package.json'), 'utf8')) as { scripts?: Record<string, unknown> } & Record<string, unknown>;
  const deps = ['dependencies', 'devDependencies', 'optionalDependencies'].some((k) => Object.keys((pkg[k] as object | undefined) ?? {}).length > 0);
  const scripted = ['build', 'preinstall', 'install', 'postinstall', 'prepare'].some((k) => typeof pkg.scripts?.[k] === 'string');
  if (install && !o.force && !deps && !scripted) {
    o.log('no dependencies and no build script: nothing to build');
    return false;
  }
  const { pm, lockfile } = await packageManagerOf(o.appDir);
  const npmDir = await ensureTool('npm', o.log);
  const ro: Record<string, string> = {
    [path.join(o.nodeDir, 'bin', 'node')]: '/opt/thaw/node/bin/node',
    [path.join(o.nodeDir, 'include')]: '/opt/thaw/node/include',
    [npmDir]: '/opt/thaw/node/lib/node_modules/npm',
  };
  if (pm !== 'npm') ro[await ensureTool(pm, o.log)] = `/opt/thaw/node/lib/node_modules/${pm}`;
  const shims = [...new Set(['npm', 'npx', pm])];
  const cache = path.join(cacheRoot(), 'build-cache');
  await run('mkdir', ['-p', cache]);
  await run('chown', [`${BUILD_UID}:${BUILD_UID}`, cache]);
  o.log(`building with ${pm}${lockfile ? ` (${lockfile})` : ''} on Node ${o.nodeVersion}${install ? '' : ' (node_modules shipped, --build)'}`);
  await chownTree(o.appDir, BUILD_UID);
  const env: Record<string, string> = {
    PATH: '/app/node_modules/.bin:/opt/thaw/bin:/opt/thaw/node/bin:/usr/local/bin:/usr/bin:/bin',
    HOME: '/tmp/home',
    TMPDIR: '/tmp',
    CI: 'true',
    NEXT_TELEMETRY_DISABLED: '1',
    npm_config_nodedir: '/opt/thaw/node',
    npm_config_cache: '/cache/npm',
    npm_config_update_notifier: 'false',
    ...(pm === 'pnpm' ? { npm_config_store_dir: '/cache/pnpm-store' } : {}),
    YARN_CACHE_FOLDER: '/cache/yarn',
    // Yarn 4: never the app's own `yarnPath` release, no telemetry, its cache under the build cache.
    ...(pm === 'yarn4' ? { YARN_IGNORE_PATH: '1', YARN_ENABLE_TELEMETRY: '0', YARN_GLOBAL_FOLDER: '/cache/yarn-berry', YARN_ENABLE_GLOBAL_CACHE: '1', YARN_ENABLE_PROGRESS_BARS: '0' } : {}),
    ...hostNetworkEnv(),
  };
  for (const step of buildSteps(pm, lockfile, install, pkg.scripts ?? {})) {
    const t0 = performance.now();
    o.log(`$ ${step.argv.join(' ')}`);
    // A step can be silent for minutes (a C++ compile): say it is alive, so progress streams never go idle.
    let last = performance.now();
    const beat = setInterval(() => {
      if (performance.now() - last >= 30_000) {
        o.log(`  ... ${step.what} still running (${Math.round((performance.now() - t0) / 1000)} s)`);
        last = performance.now();
      }
    }, 5_000);
    const shimArgs = shims.map((t) => (t === 'npx' ? `npx:npm/bin/npx-cli.js` : `${TOOLS[t as PackageManager].bin ?? t}:${t}/${TOOLS[t as PackageManager].entry}`));
    const res = await runSandboxed({
      argv: ['/bin/sh', '-c', SHIM_SCRIPT, 'sh', shimArgs.join(' '), ...step.argv],
      appDir: o.appDir,
      ro,
      ...(step.network ? { rw: { [cache]: '/cache' } } : {}),
      network: step.network,
      env,
      timeoutMs: o.timeoutMs ?? BUILD_TIMEOUT_MS,
      memoryBytes: o.memoryBytes ?? BUILD_MEMORY_BYTES,
      onLine: (l) => {
        last = performance.now();
        o.log(`  ${l}`);
      },
    }).finally(() => clearInterval(beat));
    const details = { step: step.what, tail: res.tail.slice(-20).join('\n'), exitCode: res.code };
    if (res.timedOut) throw new ThawError('BUILD_TIMEOUT', `the build step "${step.what}" ran over its ${Math.round((o.timeoutMs ?? BUILD_TIMEOUT_MS) / 1000)} s limit`, { details });
    if (res.oomKilled) throw new ThawError('BUILD_OUT_OF_MEMORY', `the build step "${step.what}" ran out of its ${o.memoryBytes ?? BUILD_MEMORY_BYTES} byte memory limit`, { details });
    if (res.code !== 0) {
      throw new ThawError('BUILD_FAILED', `the build step "${step.what}" (${step.argv.join(' ')}) failed with exit ${res.code ?? res.signal}:\n${details.tail}`, { details });
    }
    o.log(`  (${step.what}: ${Math.round(performance.now() - t0)} ms)`);
  }
  return true;
}

/** The host's CA bundle, proxy and registry settings, so the fetch step reaches the registry the way the host does. */
function hostNetworkEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  if (existsSync('/etc/ssl/certs/ca-certificates.crt')) env.NODE_EXTRA_CA_CERTS = '/etc/ssl/certs/ca-certificates.crt';
  for (const k of ['NODE_EXTRA_CA_CERTS', 'SSL_CERT_FILE', 'HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'NO_PROXY', 'no_proxy', 'npm_config_registry']) {
    const v = process.env[k];
    if (v && (!/CERT/.test(k) || v.startsWith('/etc/ssl/'))) env[k] = v;
  }
  return env;
}

/** Makes /opt/thaw/bin/<tool> scripts that run each tool's entry with the pinned Node, then runs the step. */
const SHIM_SCRIPT = `set -e
mkdir -p /tmp/home /tmp/bin
for t in $1; do n=\${t%%:*}; e=\${t#*:}; printf '#!/bin/sh\\nexec /opt/thaw/node/bin/node /opt/thaw/node/lib/node_modules/%s "$@"\\n' "$e" > /tmp/bin/$n; chmod +x /tmp/bin/$n; done
shift
PATH=/app/node_modules/.bin:/tmp/bin:$PATH exec "$@"`;
