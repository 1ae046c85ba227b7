import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, copyFile, chmod, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fixture, getJson, HELLO } from '../test/vm/fixture.ts';
import { buildAppImage } from '../src/image/build.ts';
import { coldBoot } from '../src/lifecycle/boot.ts';
import { destroyVm } from '../src/lifecycle/destroy.ts';

const nodeBin = process.argv[2]!;
const f = await fixture();
const tmp = await mkdtemp(path.join(os.tmpdir(), 'probe-'));
try {
  const root = path.join(tmp, 'rootfs');
  execFileSync('cp', ['-a', `${f.assets.rootfs}/.`, `${root}/`]);
  await copyFile(nodeBin, path.join(root, 'usr/local/bin/node'));
  await chmod(path.join(root, 'usr/local/bin/node'), 0o755);
  await copyFile('/lib/x86_64-linux-gnu/libatomic.so.1', path.join(root, 'lib/x86_64-linux-gnu/libatomic.so.1'));
  const img = path.join(tmp, 'app.img');
  await buildAppImage({ appDir: HELLO, baseRootfs: root, out: img, diskMiB: 1024, maxAppBytes: 256 << 20 });
  const t0 = Date.now();
  const run = await coldBoot(f.ctx, { app: 'hello', deployId: 'd1', baseDisk: img, env: { WHO: 'probe' }, run: { ...f.run, argv: ['/bin/sh', '-c', 'node -v; exec node server.js'] } });
  console.log('booted in', Date.now() - t0, 'ms');
  console.log(await getJson(run.vm.appAddress.port));
  console.log((await run.agent.request({ op: 'logs', max_bytes: 4096 }, 5000)).text);
  await destroyVm(f.ctx, run);
} catch (e) {
  console.error('FAILED', e);
} finally {
  await f.cleanup();
  await rm(tmp, { recursive: true, force: true });
}
