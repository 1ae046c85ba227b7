// Volume steps of the lifecycle (the rules are in src/volume/): before a VM
// starts, check the app's volume file on this node (e2fsck -p replays the
// journal after a crash; a missing file is made, a smaller one grown); after
// the gate, mount it in the guest; before every pause (and before a VM is
// deleted), stop the app and unmount it, so no seed holds a page of it.
import type { AgentClient } from '../guest/channel.ts';
import { prepareVolume, volumeFile } from '../volume/file.ts';
import { checkVolumeAgainstCwd } from '../volume/spec.ts';
import { VOLUME_DEVICE } from '../wire/agent.ts';
import type { NodeContext, RunningVm, Stopwatch } from './context.ts';

/** What the control plane sends with a wake: where the volume mounts and how big it is. */
export interface VolumeParams {
  path: string;
  sizeBytes: number;
}

/** A volume attached to a VM: the file on this node, the guest device and mount path. */
export interface AttachedVolume {
  file: string;
  device: string;
  path: string;
  /** The file was grown now (resize2fs): a seed's guest still knows the device's old capacity. */
  grown: boolean;
}

/**
 * Check (or make, or grow) the app's volume file before QEMU opens it; times go into the wake record.
 * VOLUME_INVALID when the volume would hide the app's working folder `cwd`.
 */
export async function prepareAttach(ctx: NodeContext, app: string, v: VolumeParams | null | undefined, cwd: string, sw: Stopwatch): Promise<AttachedVolume | null> {
  if (!v) return null;
  checkVolumeAgainstCwd(v.path, cwd);
  const file = volumeFile(ctx.dataDir, app);
  const r = await prepareVolume(file, v.sizeBytes);
  sw.stages.volume_check_ms = r.ms;
  if (r.fsck !== null) sw.stages.volume_fsck_exit = r.fsck;
  if (r.created) sw.stages.volume_created = 1;
  if (r.grown) sw.stages.volume_grown = 1;
  return { file, device: VOLUME_DEVICE, path: v.path, grown: r.grown };
}

/** Mount it in the guest: send after the gate and before start_app (the agent serves requests in order). */
export async function mountVolume(agent: AgentClient, vol: AttachedVolume | null, sw: Stopwatch): Promise<void> {
  if (!vol) return;
  const t = performance.now();
  const r = await agent.request({ op: 'mount_volume', device: vol.device, path: vol.path }, 30_000);
  // Sent with the gate, so this wait includes the gate's; the guest's own mount time is apart.
  sw.stages.volume_mount_ms = Math.round(performance.now() - t);
  sw.stages.volume_mount_guest_ms = r.ms;
}

/**
 * Before a pause or a delete: SIGTERM the app (SIGKILL after graceMs), then sync, unmount and
 * drop the device's cache. Resolves with the unmount's milliseconds (null: no volume).
 */
export async function stopAppAndUnmountVolume(run: RunningVm, graceMs = 5000): Promise<number | null> {
  if (!run.volume) return null;
  const t = performance.now();
  const unmount = () => unmountVolume(run);
  try {
    // A loaded host can be slow to answer: the deadline is generous, the VM is going away anyway.
    await run.agent.request({ op: 'stop_app', timeout_ms: graceMs }, graceMs + 30_000);
  } catch (err) {
    // The agent syncs the volume before it looks at the app: what the app wrote still reaches the host.
    await unmount().catch(() => {});
    throw err;
  }
  await unmount();
  return Math.round(performance.now() - t);
}

/** Sync, unmount and drop the cache of the VM's volume (after its app stopped; a sleep step). */
export async function unmountVolume(run: RunningVm): Promise<void> {
  if (!run.volume) return;
  await run.agent.request({ op: 'unmount_volume', device: run.volume.device, path: run.volume.path }, 60_000);
}
