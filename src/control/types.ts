// The control plane's service interface: what the HTTP control API (src/api)
// exposes and what `thaw up` implements (src/control/service.ts). The control
// plane decides WHERE and THAT an app runs; node agents own HOW.
import type { Egress } from '../network/egress.ts';
import type { Readable } from 'node:stream';
import type { AppRow, DeployRow, SeedRow, SleepRow, VolumeRow, WakeRow } from '../store/types.ts';
import type { VolumeSpec } from '../volume/spec.ts';
import type { VolumeMoveResult, VolumeRestoreResult } from './volume-moves.ts';
import type { HeartbeatResponse, NodeInfo, NodeStatus } from '../wire/node.ts';

export type AppView = AppRow & { url: string };

export interface DeployResult {
  app: string;
  deploy: DeployRow;
  /** The previous deploy's seed, deleted because it froze old code. */
  purgedSeed: string | null;
  buildMs: number;
}

/** An OCI image to deploy: a registry reference or a local archive (src/image/oci-ref.ts). */
export interface ImageSource {
  image: string;
  /** Replaces the image's Cmd. */
  command?: string[];
  /** The app's port; default: the image's first exposed TCP port, else 8080. */
  port?: number;
  /** Registry credentials; without them skopeo uses ~/.docker/config.json of the control plane's user. */
  auth?: { username: string; password: string };
}

export function isImageSource(s: unknown): s is ImageSource {
  return typeof s === 'object' && s !== null && typeof (s as { image?: unknown }).image === 'string';
}

/** What a deploy may set besides its source (API headers `x-thaw-*`, `thaw deploy` flags). */
export interface DeployOptions {
  env?: Record<string, string>;
  /** Seconds without a request before the app sleeps. */
  idleTimeoutS?: number;
  /** Seconds a request is held for the app's wake before 503 + Retry-After. */
  wakeTimeoutS?: number;
  /** What the app's VMs may reach (src/network/egress.ts). */
  egress?: Egress;
  /** Run the Node build step even when node_modules is shipped. */
  build?: boolean;
  /** The app's volume (kept across deploys; src/volume/spec.ts). */
  volume?: VolumeSpec;
  /** Progress lines (upload, build log, image). */
  onProgress?: (line: string) => void;
}

export interface ControlService {
  createApp(name: string, opts?: { idleTimeoutS?: number }): Promise<AppView>;
  listApps(): Promise<AppView[]>;
  getApp(name: string): Promise<AppView>;
  /** Stops its VM, deletes images and seeds (locally, on every node, in object storage). */
  deleteApp(name: string, opts?: { deleteVolume?: boolean }): Promise<void>;
  /** Creates the app when it does not exist. `tarball`: gzip or plain tar of the app folder. */
  /** Deploy a Node folder (its tarball) or an OCI image (pulled by the control plane). */
  deploy(name: string, source: Readable | ImageSource, opts?: DeployOptions): Promise<DeployResult>;
  /** Every app's volume (path, size, home node, lease). */
  listVolumes(): Promise<VolumeRow[]>;
  /** Grow an app's volume (applied on its node before the next attach). */
  resizeVolume(name: string, sizeBytes: number): Promise<VolumeRow>;
  /** Delete an app's volume and its file; the app must be asleep. */
  removeVolume(name: string): Promise<void>;
  /** Bring the newest stored backup of the app's volume (or the one sleep `backupId` made) onto `node`, its new home; the app must be asleep. */
  restoreVolume(name: string, node: string, backupId?: string): Promise<VolumeRestoreResult>;
  /** Move the app's volume to node `to` while the app is asleep (through object storage, or node to node). */
  moveVolume(name: string, to: string): Promise<VolumeMoveResult>;
  setEnv(name: string, vars: Record<string, string>): Promise<void>;
  unsetEnv(name: string, keys: string[]): Promise<void>;
  listEnv(name: string): Promise<{ key: string; updatedAt: string }[]>;
  /** Drain requests, SIGTERM the app, bake (first sleep after a deploy) and delete the VM. `record`: null when it was not running. */
  sleep(name: string): Promise<{ baked: boolean; seed: SeedRow | null; record?: SleepRow | null }>;
  /** Sleep records, newest first. */
  sleeps(name: string, limit?: number): Promise<SleepRow[]>;
  /** Wake now (thaw, or cold boot); resolves with the wake record. */
  wake(name: string): Promise<WakeRow>;
  wakes(name: string, limit?: number): Promise<WakeRow[]>;
  seeds(): Promise<SeedRow[]>;
  /** App log text so far; with follow, an iterable that yields new text until the signal aborts. */
  logs(name: string, opts: { follow: boolean; signal?: AbortSignal }): Promise<AsyncIterable<string>>;
  /** A node agent's heartbeat (`thaw node`); the answer lists VMs it must stop. */
  heartbeat(st: NodeStatus): Promise<HeartbeatResponse>;
  nodes(): Promise<NodeInfo[]>;
  /** seed id -> names of the live nodes that hold its files. */
  seedHolders(): Promise<Record<string, string[]>>;
  /** A deploy's disk image, zstd-compressed, for nodes that do not have it. */
  deployImage(name: string, deployId: string): Promise<{ stream: Readable; bytes: number }>;
  /** Prometheus exposition text. */
  metrics(): Promise<{ contentType: string; body: string }>;
}
