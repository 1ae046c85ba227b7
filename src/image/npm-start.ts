// `npm start` semantics, worked out on the host when the image is built so
// the guest starts the app's own process directly (no npm process at every
// wake, and the pid, exit code and signals Thaw tracks are the app's):
// - the `prestart` hook runs first (`poststart` would run after the server
//   exits, so it is not run);
// - a script that only calls another script (`npm run serve`, `npm start`,
//   `yarn serve`, `pnpm run serve`) is followed to that script, with its own
//   `pre` hook, as npm would run it;
// - a simple command is exec'd (it becomes the tracked process); a compound
//   one (`a && b`, pipes) runs under /bin/sh;
// - npm's environment: npm_lifecycle_event, npm_lifecycle_script,
//   npm_package_name, npm_package_version, npm_package_json, npm_command,
//   npm_node_execpath, npm_execpath, NODE, INIT_CWD; node_modules/.bin first
//   on PATH. npm itself is on the guest's PATH for scripts that need it.

export interface PackageScripts {
  name?: string;
  version?: string;
  scripts?: Record<string, unknown>;
}

const GUEST_NODE = '/usr/local/bin/node';
const GUEST_NPM = '/usr/local/lib/node_modules/npm/bin/npm-cli.js';
const RUN_OTHER = /^\s*(?:npm\s+(?:run(?:-script)?|run)\s+([\w:.@/-]+)|npm\s+(start)|yarn\s+(?:run\s+)?([\w:.@/-]+)|pnpm\s+(?:run\s+)?([\w:.@/-]+))\s*$/;
const COMPOUND = /[;&|()`\n]/;

/** The shell command and npm environment that `npm start` would run for this package.json. */
export function npmStart(pkg: PackageScripts, event = 'start'): { command: string; env: Record<string, string> } {
  const scripts = pkg.scripts ?? {};
  const str = (k: string) => (typeof scripts[k] === 'string' ? (scripts[k] as string) : undefined);
  let name = event;
  const hooks: string[] = [];
  for (let hops = 0; hops < 16; hops++) {
    const pre = str(`pre${name}`);
    if (pre) hooks.push(pre);
    const script = str(name) ?? (name === 'start' ? 'node server.js' : undefined);
    const m = script ? RUN_OTHER.exec(script) : null;
    const next = m ? (m[1] ?? m[2] ?? m[3] ?? m[4])! : undefined;
    if (next === undefined || (str(next) === undefined && next !== 'start')) break;
    name = next;
  }
  const script = str(name) ?? 'node server.js';
  const main = COMPOUND.test(script) || /^\s*exec\s/.test(script) ? script : `exec ${script}`;
  const command = hooks.length ? `${hooks.map((h) => `{ ${h}\n} || exit $?`).join('\n')}\n${main}` : main;
  const env: Record<string, string> = {
    npm_lifecycle_event: name,
    npm_lifecycle_script: script,
    npm_package_json: '/app/package.json',
    npm_command: name === 'start' ? 'start' : 'run-script',
    npm_node_execpath: GUEST_NODE,
    npm_execpath: GUEST_NPM,
    NODE: GUEST_NODE,
    INIT_CWD: '/app',
    ...(pkg.name !== undefined ? { npm_package_name: pkg.name } : {}),
    ...(pkg.version !== undefined ? { npm_package_version: pkg.version } : {}),
  };
  return { command, env };
}
