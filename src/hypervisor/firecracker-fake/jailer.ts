// A fake `jailer` (Firecracker docs/jailer.md) for unit tests. spawn.ts runs
// it as `bash -c 'cmd=$(node jailer.ts ARGS); eval "$cmd"'`: this script
// checks the arguments, builds the jail, and prints the command the jail ends
// in, which bash then execs (so, as with the real jailer, the spawned pid
// becomes the VMM's). Rules, from "Jailer Usage" and "Jailer Operation":
// - JU1 --id, --exec-file, --uid and --gid are required; any other option must
//   be one the jailer knows; everything after `--` goes to Firecracker.
// - JU2 the id "may contain alphanumeric characters and hyphens", at most 64.
// - JU3 the exec file exists and its "filename must include the string
//   `firecracker`".
// - JU4 --cgroup is `<cgroup_file>=<value>`; --cgroup-version is 1 or 2;
//   --netns is a path to a network namespace handle that exists.
// - JO1 create `<chroot_base>/<exec_file_name>/<id>/root` (default base
//   /srv/jailer; nothing is done if it exists) and copy the exec file into it.
// - JO2 mknod /dev/net/tun (10,200) and /dev/kvm (10,232) inside, chown them
//   and the jail root to uid:gid.
// - JO3 join --netns, drop to uid:gid, and exec `<exec_file_name> --id=<id>
//   --start-time-us=... --start-time-cpu-us=...` plus the arguments after `--`,
//   in the jail root, with the environment cleared.
// Not done by the fake: the cgroup files (it does not touch /sys/fs/cgroup;
// the request is logged) and the real pivot_root (Node and the repository must
// stay reachable): the fake Firecracker is told its root (FAKE_CHROOT) and
// enforces it (host.ts J1). It keeps descriptor 3 open, the test log
// (FAKE_LOG_FD), which the real jailer would close; nothing else survives.
import { execFileSync } from 'node:child_process';
import { chownSync, copyFileSync, existsSync, mkdirSync, statSync } from 'node:fs';
import { appendFileSync } from 'node:fs';
import path from 'node:path';

const argv = process.argv.slice(2);
const fail = (msg: string): never => {
  process.stderr.write(`jailer: ${msg}\n`);
  process.exit(1);
};
const VALUE = new Set(['--id', '--exec-file', '--uid', '--gid', '--chroot-base-dir', '--netns', '--cgroup', '--cgroup-version', '--parent-cgroup', '--resource-limit', '--node']);
const FLAG = new Set(['--daemonize', '--new-pid-ns']);
const opts = new Map<string, string[]>();
let i = 0;
for (; i < argv.length && argv[i] !== '--'; i++) {
  const a = argv[i]!;
  if (FLAG.has(a)) opts.set(a, ['']);
  else if (VALUE.has(a) && i + 1 < argv.length) opts.set(a, [...(opts.get(a) ?? []), argv[++i]!]);
  else fail(`unexpected argument '${a}'`); // JU1
}
const fcArgs = argv.slice(i + 1);
const one = (k: string): string => opts.get(k)?.[0] ?? fail(`missing required argument ${k}`); // JU1
const id = one('--id');
if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) fail(`invalid id "${id}"`); // JU2
const exec = one('--exec-file');
if (!existsSync(exec) || !statSync(exec).isFile()) fail(`exec file ${exec} does not exist`); // JU3
if (!path.basename(exec).includes('firecracker')) fail(`exec file name ${exec} must include "firecracker"`); // JU3
const [uid, gid] = ['--uid', '--gid'].map((k) => {
  const v = one(k);
  if (!/^\d+$/.test(v)) fail(`${k} must be a number, got ${v}`);
  return Number(v);
}) as [number, number];
for (const c of opts.get('--cgroup') ?? []) if (!/^[a-z]+\.[a-z._]+=\S+$/.test(c)) fail(`invalid cgroup "${c}"`); // JU4
const cgv = opts.get('--cgroup-version')?.[0];
if (cgv !== undefined && cgv !== '1' && cgv !== '2') fail(`invalid cgroup version ${cgv}`); // JU4
const netns = opts.get('--netns')?.[0];
if (netns !== undefined && !existsSync(netns)) fail(`netns ${netns} does not exist`); // JU4

const root = path.join(opts.get('--chroot-base-dir')?.[0] ?? '/srv/jailer', path.basename(exec), id, 'root'); // JO1
mkdirSync(path.join(root, 'dev', 'net'), { recursive: true });
copyFileSync(exec, path.join(root, path.basename(exec)));
for (const [dev, minor] of [['dev/net/tun', 200], ['dev/kvm', 232]] as const) { // JO2
  const p = path.join(root, dev);
  if (!existsSync(p)) execFileSync('mknod', ['-m', '0600', p, 'c', '10', String(minor)]);
  chownSync(p, uid, gid);
}
chownSync(root, uid, gid);
if (process.env.FAKE_LOG_FD) appendFileSync(Number(process.env.FAKE_LOG_FD), `${JSON.stringify({ jailer: argv, root, cgroups: opts.get('--cgroup') ?? [] })}\n`);

// JO3: the environment is cleared; the fake Firecracker gets PATH and its own FAKE_* settings.
const env = Object.entries(process.env).filter(([k]) => k === 'PATH' || (k.startsWith('FAKE_') && !['FAKE_MAIN', 'FAKE_NODE'].includes(k)));
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const cmd = [
  'cd', q(root), '&&', 'exec', 'env', '-i', ...env.map(([k, v]) => q(`${k}=${v}`)), q(`FAKE_CHROOT=${path.resolve(root)}`),
  ...(netns ? ['nsenter', q(`--net=${netns}`), '--'] : []),
  'setpriv', '--reuid', String(uid), '--regid', String(gid), '--clear-groups', '--',
  q(process.env.FAKE_NODE!), q(process.env.FAKE_MAIN!),
  q(`--id=${id}`), '--start-time-us=0', '--start-time-cpu-us=0', ...fcArgs.map(q),
];
process.stdout.write(cmd.join(' '));
