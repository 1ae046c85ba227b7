// What the control plane can ask of a node agent. NodeAgent (src/node/agent.ts)
// implements it in-process; RemoteNode (src/node/client.ts) over HTTP for
// `thaw node` processes. The shapes are the zod schemas in src/wire/node.ts.
import type { Readable } from 'node:stream';
import type { NodeEvent, NodeSleepRequest, NodeSleepResponse, NodeUploadResponse, NodeWakeRequest, NodeWakeResponse, SeedRef, VolumePacked, VolumeTransferResult } from '../wire/node.ts';

export interface NodeApi {
  readonly name: string;
  /**
   * Wake (pulling the seed first when this node lacks it); resolves with the wake record.
   * Aborting `opts.signal` while the wake is still queued drops it (WAKE_CANCELLED).
   * A failed wake's error carries its record in `details.record` when there is one.
   */
  wake(req: NodeWakeRequest, opts?: { signal?: AbortSignal }): Promise<NodeWakeResponse>;
  /** Bake when asked (no seed yet) and delete the VM. */
  sleep(req: NodeSleepRequest): Promise<NodeSleepResponse>;
  /** Delete the app's VM without baking. `vmId` limits it to that VM. */
  stop(app: string, vmId?: string): Promise<void>;
  logs(app: string): Promise<string>;
  /** The app was deleted: its VM, logs and images go. */
  forgetApp(app: string): Promise<void>;
  /** Delete the app's volume file on this node (VOLUME_CONFLICT while a VM of it runs here). */
  deleteVolume(app: string): Promise<void>;
  /** Pack and upload a seed this node holds; resolves once the object is checked. */
  uploadSeed(seed: SeedRef): Promise<NodeUploadResponse>;
  deleteSeed(seedId: string): Promise<void>;
  // Volume transfers (src/node/volume-transfer.ts); VOLUME_CONFLICT while a VM of the app runs there.
  /** Pack the app's volume file as backup `id` beside it. */
  packVolume(app: string, id: string): Promise<VolumePacked>;
  /** Upload packed backup `id` to object storage under `key` (VOLUME_BACKUP_UNAVAILABLE without it); the packed file goes either way. */
  uploadVolumeBackup(app: string, id: string, key: string, sha256: string): Promise<VolumeTransferResult>;
  /** Packed backup `id` as a byte stream (a move reads it). */
  readPackedVolume(app: string, id: string): Promise<Readable>;
  dropPackedVolume(app: string, id: string): Promise<void>;
  /** Make a packed backup read from `body` the app's volume file here (VOLUME_BACKUP_CORRUPT unless its SHA-256 is `sha256`). */
  importVolume(app: string, body: Readable, sha256: string): Promise<VolumeTransferResult>;
  /** Download backup `key` from object storage and make it the app's volume file here. */
  restoreVolume(app: string, key: string, sha256: string): Promise<VolumeTransferResult>;
  close(): Promise<void>;
}

/** A node in the control plane's own process (`thaw up`'s local node; fakes in tests). */
export interface InProcessNode extends NodeApi {
  readonly capacity: number;
  hasSeed(seedId: string | null): boolean;
  runningCount(): number;
  seedCount(): number;
  seedIds(): string[];
  /** Set by the cluster: events are delivered at once. */
  onEvent: ((e: NodeEvent) => void) | null;
  renderMetrics(): Promise<string>;
  /** Most wakes it runs at once (admission control); absent: unlimited. */
  wakeSlots?(): number;
  /** Whether the app's wake waits for a slot ('queued') or runs. */
  wakeState?(app: string): 'queued' | 'running' | null;
}
