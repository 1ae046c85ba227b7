// Thaw: restore a seed's memory and CPU/device state onto the seed's OWN disk
// (a copy-on-write overlay over the read-only disk.img), resume, refresh the
// clock and RNG, deliver the current env, start the app as a NEW process, and
// pass the liveness gate before a single request is routed.
import path from 'node:path';
import { mkdir, rm } from 'node:fs/promises';
import { AgentClient } from '../guest/channel.ts';
import { ThawError } from '../errors.ts';
import type { Manifest } from '../seed/manifest.ts';
import { UndoStack } from '../undo.ts';
import type { GateResult } from '../wire/agent.ts';
import type { RunConfig } from '../wire/run.ts';
import { checkAgentVersion, refreshGuest, startApp, vmSpec, withConsole } from './boot.ts';
import { createOverlay, Stopwatch, vmId, type NodeContext, type RunningVm } from './context.ts';
import { checkDeadline, vmProgress } from './deadline.ts';
import { attachNetwork } from './network.ts';
import { mountVolume, prepareAttach, type VolumeParams } from './volume.ts';

export interface ThawParams {
  app: string;
  deployId: string;
  seedDir: string;
  manifest: Manifest;
  env: Record<string, string>;
  run: RunConfig;
  /** The app's volume: its current file is attached; mounted after the gate, before the app. */
  volume?: VolumeParams | null;
  /**
   * TEST ONLY: restore the memory image over this disk instead of the seed's
   * own (reproduces the incident: memory and disk that are not a pair).
   */
  unsafeDiskOverride?: string;
  /** The overall wake deadline: aborting deletes the VM (WAKE_DEADLINE). */
  signal?: AbortSignal;
}

export interface ThawOutcome {
  run: RunningVm;
  gate: GateResult;
}

export async function thaw(ctx: NodeContext, p: ThawParams, sw = new Stopwatch()): Promise<ThawOutcome> {
  return UndoStack.run(async (undo) => {
    const id = vmId(p.app);
    const netKind = ctx.net ? 'tap' : 'user';
    if ((p.manifest.machine.net ?? 'user') !== netKind) throw new ThawError('SEED_MISMATCH', `seed was baked on a ${p.manifest.machine.net ?? 'user'}-mode network, this node runs ${netKind}`);
    const mem = path.join(p.seedDir, 'mem.ram');
    const net = await attachNetwork(ctx, undo, p.run);
    sw.lap('net_ms');
    const spec = { ...vmSpec(ctx, id, net.hostPort, mem, p.run.port), memMiB: p.manifest.machine.mem_mib, vcpus: p.manifest.machine.vcpus, cmdline: p.manifest.machine.cmdline, ...(net.tap ? { tap: net.tap } : {}), ...(net.jail ? { jail: net.jail } : {}) };
    await mkdir(spec.dir, { recursive: true });
    undo.push('remove vm dir', () => rm(spec.dir, { recursive: true, force: true }));
    const [, vol] = await Promise.all([createOverlay(p.unsafeDiskOverride ?? path.join(p.seedDir, 'disk.img'), spec.disk, spec.diskFormat), prepareAttach(ctx, p.app, p.volume, p.run.cwd, sw)]);
    if (vol) spec.volume = vol.file;
    sw.lap('prepare_ms');
    // The seed's virtio-blk state holds the volume's old size, which its guest kernel keeps: it
    // would refuse the grown filesystem. The seed is dropped; a cold boot sees the new size and
    // the next sleep bakes a seed that knows it.
    if (vol?.grown) throw new ThawError('SEED_MISMATCH', `the volume grew to ${p.volume!.sizeBytes} bytes: the seed's guest knows the old size`);

    checkDeadline(p.signal);
    const vm = await ctx.hv.restore(spec, { state: path.join(p.seedDir, 'state.bin'), mem }).catch((err: unknown) => {
      throw restoreError(err);
    });
    undo.push('destroy vm', () => ctx.hv.destroy(vm));
    // QEMU: the channel opens while paused. Firecracker: only after resume (see agentChannelBeforeResume).
    const early = ctx.hv.agentChannelBeforeResume ? await ctx.hv.openAgentChannel(vm) : null;
    if (early) undo.push('close channel', () => early.destroy());
    checkDeadline(p.signal);
    sw.lap('restore_ms');
    await net.ready; // the app's egress policy is in place before the guest runs
    await ctx.hv.resume(vm);
    const agent = new AgentClient(early ?? (await ctx.hv.openAgentChannel(vm)), vm.exited, { progress: vmProgress(vm.pid), ...(p.signal ? { signal: p.signal } : {}) });
    undo.push('close agent', () => agent.close());
    // Everything is pipelined right after resume: the agent frozen in the seed
    // already has its port open, and its public key is in the manifest. The
    // ping proves it is that agent with no app running; the clock and RNG are
    // refreshed (the agent starts the app only after the clock is set).
    // Nothing is routed until all are done; the first failure destroys the VM.
    const t = performance.now();
    const helloP = withConsole(vm.consoleLog, agent.ready(10_000, { ping: true })).then((h) => {
      sw.stages.agent_ms = Math.round(performance.now() - t);
      checkAgentVersion(h);
      if (h.app_pid !== null) throw new ThawError('SEED_CORRUPT', 'seed has a running app; a bake always stops it');
      if (h.pubkey !== p.manifest.agent_pubkey) throw new ThawError('SEED_CORRUPT', 'the agent in the memory image is not the one the manifest names');
      return h;
    });
    const refreshP = refreshGuest(agent);
    // The gate is sent before the app start: the agent runs it as soon as it
    // arrives and refuses to start the app after a failed gate, so an app never
    // runs with its secrets on a disk that does not match the memory.
    const gateP = agent.request({ op: 'gate', canary_sha256: p.manifest.canary.sha256 }, 20_000).then((g) => {
      sw.stages.gate_ms = Math.round(performance.now() - t);
      if (!g.ok) throw new ThawError('GATE_FAILED', `liveness gate failed: ${g.reason ?? 'unknown'}`, { details: { gate: g } });
      return g;
    });
    // The volume is mounted only once the gate has passed (the agent refuses it after a failed one).
    const mountP = mountVolume(agent, vol, sw);
    mountP.catch(() => {});
    const appP = startApp(ctx, agent, p.run, p.env, p.manifest.agent_pubkey, sw).then((pid) => {
      sw.stages.app_start_ms = Math.round(performance.now() - t);
      return pid;
    });
    appP.catch(() => {}); // observed below; a failure elsewhere may come first
    // First failure wins (and the undo stack deletes the VM); otherwise wait for the app.
    const [, , gate] = await Promise.all([helloP, refreshP, gateP, mountP]);
    const appPid = await appP;
    sw.lap('parallel_ms');
    ctx.log.info({ app: p.app, vm: id, appPid, stages: sw.stages }, 'thawed');
    sw.stages.progress_renewals = agent.renewals;
    return {
      run: { app: p.app, deployId: p.deployId, vm, agent, appPid, bootMode: 'snapshot', seedId: p.manifest.seed_id, startedAt: Date.now(), volume: vol },
      gate,
    };
  });
}

/**
 * The VMM refused the seed's state (QMP error, failed migration, exit while
 * loading it): the guest cannot run this seed, and details.restore marks that
 * for the seed policy. A timeout is not proof (a loaded host) and is not marked.
 */
function restoreError(err: unknown): ThawError {
  const e = err instanceof ThawError ? err : new ThawError('VM_START_FAILED', String((err as Error)?.message ?? err), { cause: err });
  const proof = e.code === 'VM_START_FAILED' || e.code === 'QMP_ERROR';
  return new ThawError(e.code, `restore failed: ${e.message}`, { cause: e, details: { ...e.details, ...(proof ? { restore: true } : {}) } });
}
