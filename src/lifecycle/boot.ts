// Cold path: boot kernel + init from a disk image, wait for the agent, deliver
// env, start the app, wait for its port.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { asThawError, ThawError } from '../errors.ts';
import { AgentClient } from '../guest/channel.ts';
import { KERNEL_CMDLINE } from '../guest/scripts.ts';
import type { VmSpec } from '../hypervisor/types.ts';
import { UndoStack } from '../undo.ts';
import { PROTOCOL_VERSION, type Hello } from '../wire/agent.ts';
import { appEnvironment, type RunConfig } from '../wire/run.ts';
import { sealEnv } from '../wire/seal.ts';
import { setClock, syncClock } from './clock.ts';
import { createOverlay, freePort, Stopwatch, vmId, type NodeContext, type RunningVm } from './context.ts';
import { attachNetwork } from './network.ts';
import { checkDeadline, vmProgress } from './deadline.ts';
import { mountVolume, prepareAttach, type VolumeParams } from './volume.ts';

export interface ColdBootParams {
  app: string;
  deployId: string;
  /** Read-only raw disk to boot from: the deploy's image, or a seed's disk copy. */
  baseDisk: string;
  env: Record<string, string>;
  run: RunConfig;
  /** The overall wake deadline: aborting deletes the VM (WAKE_DEADLINE). */
  signal?: AbortSignal;
  /** The app's volume: checked here, mounted before the app starts. */
  volume?: VolumeParams | null;
}

export function vmSpec(ctx: NodeContext, id: string, hostPort: number, mem: string | null, guestPort = ctx.guestPort): VmSpec {
  const dir = path.join(ctx.dataDir, 'vms', id);
  return {
    id,
    dir,
    kernel: ctx.assets.kernel,
    initrd: ctx.assets.initrd,
    cmdline: KERNEL_CMDLINE,
    memMiB: ctx.memMiB,
    vcpus: ctx.vcpus,
    // A fixed name in the VM's own folder: Firecracker records it relative to that folder in its snapshots.
    disk: path.join(dir, `disk.${ctx.hv.diskFormat}`),
    diskFormat: ctx.hv.diskFormat,
    memFile: mem ?? path.join(dir, 'mem.ram'),
    guestPort,
    hostPort,
  };
}

/**
 * Set the guest clock and reseed its RNG: both are stale after a restore. The
 * clock is stepped at once (the agent starts the app only after that), then
 * measured again over the warmed-up channel and corrected to within 1 ms.
 */
export async function refreshGuest(agent: AgentClient): Promise<void> {
  const clock = setClock(agent, 5000).then(() => syncClock(agent, { slew: false, rounds: 2 }));
  await Promise.all([clock, agent.request({ op: 'reseed', entropy_b64: randomBytes(64).toString('base64') }, 5000)]);
}

/**
 * Start the deploy's program with its full environment (image env < app env <
 * PORT), sealed to the agent's key. Resolves to the app's pid once it listens.
 * `sw` (optional) gets `app_listen_ms`: the agent's own time from spawning the
 * app's process to seeing its port listen (the app's part of app_start_ms).
 */
export async function startApp(ctx: NodeContext, agent: AgentClient, run: RunConfig, env: Record<string, string>, pubkey = agent.lastHello?.pubkey, sw?: Stopwatch): Promise<number> {
  if (!pubkey) throw new ThawError('INTERNAL', 'startApp before the agent said hello');
  const sealed = sealEnv(appEnvironment(run, env), pubkey);
  const r = await agent.request(
    { op: 'start_app', argv: run.argv, cwd: run.cwd, uid: run.uid, gid: run.gid, env: sealed, port: run.port, listen_timeout_ms: ctx.appStartTimeoutMs },
    ctx.appStartTimeoutMs + 5000,
  );
  if (sw) sw.stages.app_listen_ms = r.listen_ms;
  return r.pid;
}

/** The host speaks PROTOCOL_VERSION only: an agent that speaks another is refused (AGENT_PROTOCOL). */
export function checkAgentVersion(h: Hello): void {
  if (h.version !== PROTOCOL_VERSION) throw new ThawError('AGENT_PROTOCOL', `the guest agent speaks protocol ${h.version}, this host ${PROTOCOL_VERSION}`);
}

/** On failure, attach the tail of the guest's serial console to the error. */
export async function withConsole<T>(consoleLog: string, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    const text = await readFile(consoleLog, 'utf8').catch(() => '');
    const e = asThawError(err);
    throw new ThawError(e.code, `${e.message}; guest console: ${text.replace(/\x1b\[[0-9;?]*[a-zA-Z]/g, '').trim().slice(-800) || '(empty)'}`, { cause: err, details: e.details });
  }
}

export async function coldBoot(ctx: NodeContext, p: ColdBootParams, sw = new Stopwatch()): Promise<RunningVm> {
  return UndoStack.run(async (undo) => {
    const id = vmId(p.app);
    const net = await attachNetwork(ctx, undo, p.run);
    const spec = { ...vmSpec(ctx, id, net.hostPort, null, p.run.port), ...(net.tap ? { tap: net.tap } : {}), ...(net.jail ? { jail: net.jail } : {}) };
    await mkdir(spec.dir, { recursive: true });
    undo.push('remove vm dir', () => rm(spec.dir, { recursive: true, force: true }));
    const [, vol] = await Promise.all([createOverlay(p.baseDisk, spec.disk, spec.diskFormat), prepareAttach(ctx, p.app, p.volume, p.run.cwd, sw)]);
    if (vol) spec.volume = vol.file;
    await net.ready;
    sw.lap('prepare_ms');
    checkDeadline(p.signal);
    const vm = await ctx.hv.boot(spec);
    undo.push('destroy vm', () => ctx.hv.destroy(vm));
    const agent = new AgentClient(await ctx.hv.openAgentChannel(vm), vm.exited, { progress: vmProgress(vm.pid), ...(p.signal ? { signal: p.signal } : {}) });
    undo.push('close agent', () => agent.close());
    sw.lap('vmm_start_ms');
    const hello = await withConsole(vm.consoleLog, agent.ready(ctx.bootTimeoutMs));
    checkAgentVersion(hello);
    sw.lap('boot_ms');
    await refreshGuest(agent);
    await mountVolume(agent, vol, sw);
    const appPid = await startApp(ctx, agent, p.run, p.env, undefined, sw);
    sw.lap('app_start_ms');
    ctx.log.info({ app: p.app, vm: id, pid: vm.pid, appPid }, 'cold boot ready');
    return { app: p.app, deployId: p.deployId, vm, agent, appPid, bootMode: 'cold', seedId: null, startedAt: Date.now(), volume: vol };
  });
}
