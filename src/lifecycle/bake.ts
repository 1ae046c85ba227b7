// Bake: the first time an app goes idle, freeze its VM into a seed.
// 1. In the guest: stop the app, delete its env file and log (tmpfs), write a
//    fresh canary to the disk, sync; then respawn the agent, whose heap saw the
//    env, so that with init_on_free=1 no secret survives in guest RAM.
// 2. Under ONE pause: save CPU/device state (the memory is already in its
//    file) and copy the disk, sparse, from the same instant. Delete the VM.
// 3. Hash every file, write manifest.json last, make files read-only, and
//    rename the folder into place: a seed without a manifest does not exist.
import { randomBytes, createHash, randomUUID } from 'node:crypto';
import { chmod, chown, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { shareMemImage } from '../hypervisor/jail.ts';
import path from 'node:path';
import { ThawError, asThawError } from '../errors.ts';
import { fileEntry } from '../seed/files.ts';
import { MANIFEST_VERSION, type Manifest } from '../seed/manifest.ts';
import { UndoStack } from '../undo.ts';
import { CANARY_PATH } from '../wire/agent.ts';
import { execFile, type NodeContext, type RunningVm } from './context.ts';
import { destroyVm } from './destroy.ts';
import { writeVerified } from './verify.ts';

export interface BakeResult {
  seedId: string;
  seedDir: string;
  manifest: Manifest;
  manifestSha256: string;
  pauseMs: number;
  totalMs: number;
}

/** Seeds live in DATA/seeds/<seedId>; a bake in progress in DATA/seeds/.bake-<seedId>. */
export function seedsDir(ctx: NodeContext): string {
  return path.join(ctx.dataDir, 'seeds');
}

export async function bake(ctx: NodeContext, run: RunningVm): Promise<BakeResult> {
  const t0 = performance.now();
  const seedId = `${run.app}-${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;
  const finalDir = path.join(seedsDir(ctx), seedId);
  const tmp = path.join(seedsDir(ctx), `.bake-${seedId}`);
  try {
    return await UndoStack.run(async (undo) => {
      // The VM is going away whatever happens.
      undo.push('destroy vm', () => destroyVm(ctx, run));
      const { agent } = run;
      await agent.request({ op: 'stop_app', timeout_ms: 5000 }, 10_000);
      const canary = randomBytes(4096);
      await agent.request({ op: 'scrub', canary_b64: canary.toString('base64') }, 30_000);
      const oldPid = agent.lastHello?.agent_pid;
      await agent.request({ op: 'respawn' }, 5000);
      const fresh = await agent.ready(30_000, { notPid: oldPid });

      await mkdir(tmp, { recursive: true });
      undo.push('remove partial seed', () => rm(tmp, { recursive: true, force: true }));
      const state = path.join(tmp, 'state.bin');
      const mem = path.join(tmp, 'mem.ram');
      const disk = path.join(tmp, 'disk.img');

      const p0 = performance.now();
      await ctx.hv.pause(run.vm);
      await ctx.hv.snapshot(run.vm, { state, mem });
      // The VM stays paused: the disk copy is of the same instant. -U: QEMU still holds the image open.
      await execFile('qemu-img', ['convert', '-U', '-f', run.vm.spec.diskFormat, '-O', 'raw', run.vm.spec.disk, disk]);
      const pauseMs = Math.round(performance.now() - p0);
      await destroyVm(ctx, run);

      const [memE, stateE, diskE] = await Promise.all([fileEntry(mem), fileEntry(state), fileEntry(disk)]);
      const manifest: Manifest = {
        version: MANIFEST_VERSION,
        app: run.app,
        deploy_id: run.deployId,
        seed_id: seedId,
        created_at: new Date().toISOString(),
        driver: ctx.hv.name,
        accel: await ctx.hv.accel(),
        machine: { mem_mib: ctx.memMiB, vcpus: ctx.vcpus, cmdline: run.vm.spec.cmdline, guest_port: run.vm.spec.guestPort, net: run.vm.spec.tap ? 'tap' : 'user' },
        kernel_sha256: ctx.assets.kernelSha256,
        initrd_sha256: ctx.assets.initrdSha256,
        files: { 'mem.ram': memE, 'state.bin': stateE, 'disk.img': diskE },
        agent_pubkey: fresh.pubkey,
        agent_protocol: fresh.version,
        canary: { path: CANARY_PATH, sha256: createHash('sha256').update(canary).digest('hex') },
        bake: { pause_ms: pauseMs, total_ms: Math.round(performance.now() - t0) },
      };
      const manifestText = `${JSON.stringify(manifest, null, 2)}\n`;
      // Seed files belong to root, read-only; a jailed VMM created the memory image, and later
      // jailed thaws map it privately through the VMM group (see src/hypervisor/jail.ts).
      if (process.getuid?.() === 0) await Promise.all([mem, state, disk].map((f) => chown(f, 0, 0)));
      await Promise.all([mem, state, disk].map((f) => chmod(f, 0o444)));
      if (run.vm.spec.jail && !ctx.hv.memImageReadOnly) await shareMemImage(mem);
      await writeFile(path.join(tmp, 'manifest.json'), manifestText, { mode: 0o444 });
      await writeVerified(tmp);
      await rename(tmp, finalDir);
      ctx.log.info({ app: run.app, seedId, pauseMs, totalMs: manifest.bake.total_ms }, 'baked seed');
      return {
        seedId,
        seedDir: finalDir,
        manifest,
        manifestSha256: createHash('sha256').update(manifestText).digest('hex'),
        pauseMs,
        totalMs: Math.round(performance.now() - t0),
      };
    });
  } catch (err) {
    const e = asThawError(err, 'BAKE_FAILED');
    throw e.code === 'BAKE_FAILED' ? e : new ThawError('BAKE_FAILED', `bake of ${run.app} failed: ${e.message}`, { cause: e });
  }
}
