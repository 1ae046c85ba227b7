// Tenant isolation with real VMs, real namespaces and real nftables: every VM
// in its own network namespace on a TAP, the router reaching the app at the
// veth address, and nothing else. From inside a guest, every host address, the
// namespace gateway, a host server on 0.0.0.0, a loopback-only one and a
// second VM are unreachable; a TEST-NET-2 "internet" host in a namespace of
// its own answers (unless the app's egress says otherwise). Then one seed is
// thawed twice at once (same guest IP, two namespaces) and everything of ours
// is gone after destroy and shutdown.
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunningVm } from '../../src/lifecycle/context.ts';
import { destroyVm } from '../../src/lifecycle/destroy.ts';
import { sleepVm } from '../../src/lifecycle/sleep.ts';
import { wake } from '../../src/lifecycle/wake.ts';
import { hostAddresses, LOCK_DIR } from '../../src/network/netns.ts';
import { NetPool } from '../../src/network/pool.ts';
import { netSupport } from '../../src/network/host.ts';
import { processJail, VMM_GID, vmmOwner } from '../../src/hypervisor/jail.ts';
import { checkSeed } from '../../src/lifecycle/verify.ts';
import type { Qmp } from '../../src/hypervisor/qmp.ts';
import { existsSync, readdirSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { startThaw, type Running } from '../../src/control/up.ts';
import { NodeAgent, sharedImages } from '../../src/node/agent.ts';
import { LocalNode } from '../../src/node/local.ts';
import { createNodeServer } from '../../src/node/server.ts';
import { appImage, fixture, qemuProcesses, ROOT, runOf, type Fixture } from './fixture.ts';

const APP = path.join(ROOT, 'test', 'vm', 'apps', 'netprobe');
const INET = `thvt-${process.pid % 100000}`;
const sh = (cmd: string, ...args: string[]) => execFileSync(cmd, args, { encoding: 'utf8' });

/** A greeting TCP server (the probe app counts a greeting as success). */
function greeter(host: string): Promise<net.Server> {
  const s = net.createServer((c) => c.end('hello\n'));
  return new Promise((r) => s.listen(0, host, () => r(s)));
}
const portOf = (s: net.Server) => (s.address() as net.AddressInfo).port;

async function probe(run: RunningVm, targets: string[]): Promise<Record<string, string>> {
  const a = run.vm.appAddress;
  const res = await fetch(`http://${a.host}:${a.port}/probe?t=${targets.join(',')}`);
  return (await res.json()) as Record<string, string>;
}

/** Our namespaces, links and locks (other helpers' and nodes' are not counted). */
async function ours(pool: NetPool): Promise<string[]> {
  const ns = sh('ip', 'netns', 'list').split('\n').filter((l) => l.startsWith(`thv-${pool.tag}-`) || l.startsWith(INET));
  const links = sh('ip', '-o', 'link', 'show').split('\n').filter((l) => l.includes(`thv-${pool.tag}-`) || l.includes(INET.replace('-', '')));
  const locks: string[] = [];
  for (const f of await readdir(LOCK_DIR).catch(() => [] as string[])) if ((await readFile(path.join(LOCK_DIR, f), 'utf8').catch(() => '')) === pool.tag) locks.push(f);
  return [...ns, ...links, ...locks];
}

describe('tenant isolation (per-VM network namespaces)', { concurrency: false, skip: (await netSupport()).isolated ? false : 'needs root, /dev/net/tun, ip and nft' }, () => {
  let f: Fixture;
  let pool: NetPool;
  let inetServer: ChildProcess;
  const servers: net.Server[] = [];
  let anyPort = 0;
  let loopPort = 0;
  let a: RunningVm | null = null;
  const thawed: RunningVm[] = [];
  let seedDir = '';
  let image = '';
  // The real services a tenant must not reach, bound to every host address (as `thaw up --host 0.0.0.0` and a `thaw node --host 0.0.0.0` would be).
  let thaw: Running | null = null;
  let nodeApi: FastifyInstance | null = null;
  const named: Record<string, number> = {};

  before(async () => {
    f = await fixture();
    pool = new NetPool({ dataDir: f.dataDir, log: f.ctx.log, size: 1, owner: (s) => vmmOwner(s.index) });
    await pool.start();
    f.ctx.net = pool;
    // The "internet": 198.51.100.1 and .2 in a namespace of their own, routed from the host.
    const hostIf = `${INET.replace('-', '')}h`;
    sh('ip', 'netns', 'add', INET);
    sh('ip', 'link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'inet0', 'netns', INET);
    sh('ip', 'addr', 'add', '198.51.100.254/24', 'dev', hostIf);
    sh('ip', 'link', 'set', hostIf, 'up');
    for (const c of [['addr', 'add', '198.51.100.1/24', 'dev', 'inet0'], ['addr', 'add', '198.51.100.2/24', 'dev', 'inet0'], ['link', 'set', 'inet0', 'up'], ['link', 'set', 'lo', 'up']]) sh('ip', '-n', INET, ...c);
    sh('ip', '-n', INET, 'route', 'add', 'default', 'via', '198.51.100.254');
    // :80 and :81 greet; :82 is an HTTP server, silent until asked, like the control API, the router and a node API.
    inetServer = spawn('ip', ['netns', 'exec', INET, process.execPath, '-e', "for (const p of [80, 81]) require('net').createServer((c) => c.end('inet\\n')).listen(p, '0.0.0.0'); require('http').createServer((q, s) => s.end('inet')).listen(82, '0.0.0.0'); setInterval(() => {}, 1e9)"], { stdio: 'ignore' });
    thaw = await startThaw({ data: path.join(f.dataDir, 'control'), port: 0, apiPort: 0, domain: 'localhost', idleTimeout: 300, localNode: false, host: '0.0.0.0' }, pino({ level: 'silent' }));
    const agent = new NodeAgent({ node: new LocalNode({ ...f.ctx, net: undefined }, 'iso-node'), s3: null, capBytes: 1 << 30, capacity: 1, images: sharedImages, log: f.ctx.log });
    nodeApi = await createNodeServer(agent, thaw.token);
    await nodeApi.listen({ port: 0, host: '0.0.0.0' });
    named.controlApi = Number(new URL(thaw.apiUrl).port);
    named.router = Number(new URL(thaw.routerUrl).port);
    named.nodeApi = (nodeApi.server.address() as net.AddressInfo).port;
    servers.push(await greeter('0.0.0.0'), await greeter('127.0.0.1'));
    [anyPort, loopPort] = servers.map(portOf) as [number, number];
    image = await appImage(f.assets, APP);
    const run = await runOf(APP);
    f.run = run;
    const out = await wake(f.ctx, { app: 'probe', deployId: 'd1', image, seedDir: null, seedSource: 'none', env: {}, run });
    a = out.run;
  });

  after(async () => {
    for (const r of [a, ...thawed]) if (r) await destroyVm(f.ctx, r);
    inetServer?.kill('SIGKILL');
    await nodeApi?.close();
    await thaw?.stop();
    for (const s of servers) s.close();
    execFileSync('ip', ['netns', 'del', INET], { stdio: 'ignore' });
    await pool?.shutdown();
    assert.deepEqual(await ours(pool), [], 'no namespace, link or lock of ours may be left');
    assert.deepEqual(qemuProcesses(f.dataDir), []);
    await f.cleanup();
  });

  test('the router reaches the app at the veth address through the TAP', async () => {
    assert.ok(a);
    assert.match(a.vm.appAddress.host, /^10\.213\./);
    assert.equal(a.vm.spec.tap?.name, 'tap0');
    const res = await fetch(`http://${a.vm.appAddress.host}:${a.vm.appAddress.port}/`);
    assert.equal(await res.text(), 'netprobe');
  });

  test('from the guest: the internet answers; the host, its services and the gateway do not', async () => {
    const hostTargets = hostAddresses().filter((ip) => !ip.startsWith('127.')).flatMap((ip) => [`${ip}:${anyPort}`, `${ip}:${loopPort}`]);
    const r = await probe(a!, ['198.51.100.1:80', '198.51.100.2:81', ...hostTargets, `10.0.2.2:${anyPort}`, `10.0.2.2:${loopPort}`, `169.254.169.254:80`]);
    assert.equal(r['198.51.100.1:80'], 'ok', JSON.stringify(r));
    assert.equal(r['198.51.100.2:81'], 'ok', JSON.stringify(r));
    const reached = Object.entries(r).filter(([t, v]) => !t.startsWith('198.51.100.') && v === 'ok');
    assert.deepEqual(reached, [], `host targets must be unreachable: ${JSON.stringify(r)}`);
    assert.ok(hostTargets.length >= 4, 'the host has addresses to try');
  });

  test('from the guest: the control API, the router and a node API fail at every host address; the same probe reaches an HTTP server outside', async () => {
    const addrs = [...hostAddresses().filter((ip) => !ip.startsWith('127.')), '10.0.2.2'];
    const targets = Object.values(named).flatMap((port) => addrs.map((ip) => `${ip}:${port}`));
    // Each service does answer at those addresses from the host: only the policy stands between it and the guest.
    for (const t of targets.filter((x) => !x.startsWith('10.0.2.2:'))) {
      const [host, port] = [t.slice(0, t.lastIndexOf(':')), Number(t.slice(t.lastIndexOf(':') + 1))];
      await new Promise<void>((resolve, reject) => net.connect({ host, port }).once('connect', function (this: net.Socket) { this.destroy(); resolve(); }).once('error', reject));
    }
    const r = await probe(a!, ['198.51.100.1:82', ...targets]);
    assert.equal(r['198.51.100.1:82'], 'ok', `the probe reports a reached HTTP server: ${JSON.stringify(r)}`);
    const reached = targets.filter((t) => r[t] === 'ok');
    assert.deepEqual(reached, [], `the control API (${named.controlApi}), router (${named.router}) and node API (${named.nodeApi}) must be unreachable: ${JSON.stringify(r)}`);
    assert.equal(targets.length, 3 * addrs.length);
  });

  test('one seed thawed twice at once: same guest IP, two namespaces; neither reaches the other; egress none + allow-list', async () => {
    const slept = await sleepVm(f.ctx, a!, { haveSeed: false });
    a = null;
    assert.equal(slept.error, null);
    seedDir = slept.baked!.seedDir;
    const locked = { ...f.run, egress: { mode: 'none' as const, allow: [{ cidr: '198.51.100.1/32', port: 80 }] } };
    const [t1, t2] = await Promise.all([
      wake(f.ctx, { app: 'probe', deployId: 'd1', image, seedDir, seedSource: 'local', env: {}, run: f.run }),
      wake(f.ctx, { app: 'probe2', deployId: 'd1', image, seedDir, seedSource: 'local', env: {}, run: locked }),
    ]);
    thawed.push(t1.run, t2.run);
    assert.equal(t1.record.bootMode, 'snapshot', t1.record.fallbackReason ?? '');
    assert.equal(t2.record.bootMode, 'snapshot', t2.record.fallbackReason ?? '');
    assert.notEqual(t1.run.vm.spec.tap!.netns, t2.run.vm.spec.tap!.netns);
    const other = (r: RunningVm) => `${r.vm.appAddress.host}:${r.vm.appAddress.port}`;
    const r1 = await probe(t1.run, ['198.51.100.1:81', other(t2.run), `${t2.run.vm.spec.tap!.address.host}:22`]);
    assert.equal(r1['198.51.100.1:81'], 'ok', JSON.stringify(r1));
    assert.notEqual(r1[other(t2.run)], 'ok', 'a VM must not reach another VM');
    const r2 = await probe(t2.run, ['198.51.100.1:80', '198.51.100.1:81', '198.51.100.2:80', other(t1.run), `10.0.2.2:${anyPort}`]);
    assert.deepEqual(r2['198.51.100.1:80'], 'ok', `the allow-listed host:port opens: ${JSON.stringify(r2)}`);
    for (const t of ['198.51.100.1:81', '198.51.100.2:80', other(t1.run), `10.0.2.2:${anyPort}`]) assert.notEqual(r2[t], 'ok', `${t} must be blocked under --egress none: ${JSON.stringify(r2)}`);
  });

  test('QEMU runs as the slot\'s own uid with its seccomp filter, in a root that holds only /usr and its folder; an exec: migration is refused', async () => {
    for (const r of thawed) {
      const j = await processJail(r.vm.pid);
      assert.equal(j.uid, r.vm.spec.jail!.uid);
      assert.ok(j.uid >= 200_000, `uid ${j.uid}`);
      assert.equal(j.seccomp, 2, 'Seccomp: 2 (filter)');
      // What the VMM's own root shows (mount-jail.ts): its VM folder and /usr, nothing of the node's data, /etc or /root.
      const root = `/proc/${r.vm.pid}/root`;
      assert.ok(existsSync(`${root}${path.resolve(r.vm.spec.dir)}/qmp.sock`), 'its own folder is there');
      assert.ok(existsSync(`${root}/usr/bin`), '/usr is there');
      const vmDir = path.resolve(r.vm.spec.dir);
      assert.deepEqual(readdirSync(`${root}${path.dirname(vmDir)}`), [path.basename(vmDir)], 'no other VM folder');
      for (const hidden of [path.join(f.dataDir, 'seeds'), '/etc/passwd', '/root', '/home', '/var']) {
        assert.ok(!existsSync(`${root}${hidden}`), `${hidden} must not be visible to the VMM`);
      }
    }
    const victim = thawed[1]!;
    const marker = path.join(f.dataDir, 'exec-ran');
    const qmp = (victim.vm as unknown as { qmp: Qmp }).qmp;
    const res = await Promise.race([
      qmp.execute('migrate', { uri: `exec:touch ${marker}` }).then(() => 'accepted', (e: Error) => `refused: ${e.message}`),
      victim.vm.exited.then((e) => `killed: ${e.signal ?? e.code}`),
    ]);
    await Promise.race([victim.vm.exited, new Promise((r) => setTimeout(r, 3000))]);
    assert.ok(!existsSync(marker), `the exec: command must not run (${res})`);
    assert.notEqual(res, 'accepted');
  });

  test('the VMM uid cannot write a seed file; a write to the memory image is caught before the next thaw', async () => {
    const uid = thawed[0]!.vm.spec.jail!.uid;
    const asVmm = (file: string) => {
      try {
        // The VMM reopens its inherited descriptors by /proc/self/fd/N; so does this writer.
        execFileSync('sh', ['-c', `exec 3<"${file}"; exec setpriv --reuid ${uid} --regid ${VMM_GID} --clear-groups -- dd if=/dev/urandom of=/proc/self/fd/3 bs=1 count=8 seek=8192 conv=notrunc status=none`], { stdio: 'ignore' });
        return 'written';
      } catch {
        return 'denied';
      }
    };
    for (const name of ['disk.img', 'state.bin', 'manifest.json']) assert.equal(asVmm(path.join(seedDir, name)), 'denied', name);
    await checkSeed(seedDir, { kernelSha256: f.assets.kernelSha256, initrdSha256: f.assets.initrdSha256, driver: 'qemu', accel: await f.ctx.hv.accel() });
    // QEMU 7.2 opens a private memory file read-write, so the VMM group may write it: caught by the identity check.
    assert.equal(asVmm(path.join(seedDir, 'mem.ram')), 'written');
    await assert.rejects(
      checkSeed(seedDir, { kernelSha256: f.assets.kernelSha256, initrdSha256: f.assets.initrdSha256, driver: 'qemu', accel: await f.ctx.hv.accel() }),
      (e: { code?: string }) => e.code === 'SEED_CORRUPT',
    );
  });

  test('destroy removes the namespace, veth and lock of each VM', async () => {
    const names = thawed.map((r) => r.vm.spec.tap!.netns);
    for (const r of thawed.splice(0)) await destroyVm(f.ctx, r);
    const left = sh('ip', 'netns', 'list');
    for (const n of names) assert.ok(!left.includes(n), `${n} must be gone`);
    assert.ok(!sh('ip', '-o', 'link', 'show').includes(`${names[0]}h`));
  });
});
