// The node agent's wire protocol: what the control plane sends a node (wake,
// sleep, stop, seed upload/delete) and what a node reports in its heartbeat.
// Both ends parse with these schemas: src/node/server.ts and src/node/client.ts
// for the node's API, src/api/server.ts and src/node/run.ts for the heartbeat.
import { z } from 'zod';
import { RunConfig } from './run.ts';

const Name = z.string().regex(/^[a-z][a-z0-9-]{0,39}$/);
/** Seed and deploy ids (also object-key and folder names). */
const Id = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/);
export const NodeName = z.string().regex(/^[a-z0-9][a-z0-9-]{0,39}$/, 'node names are 1-40 chars: lowercase letters, digits and dashes');

export const Address = z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65535) });
export type Address = z.infer<typeof Address>;

export const WakeRecord = z.object({
  id: z.string(),
  app: Name,
  at: z.string(),
  wallMs: z.number(),
  bootMode: z.enum(['snapshot', 'cold']),
  bootMs: z.number(),
  gateMs: z.number().nullable(),
  appStartMs: z.number(),
  pid: z.number().int().nullable(),
  fsErrors: z.number().int(),
  fallbackReason: z.string().nullable(),
  node: z.string().nullable(),
  seedSource: z.enum(['local', 'pulled', 'none']),
  placement: z.string().nullable().optional(),
  queuedMs: z.number().optional(),
  seedOutcome: z.string().nullable().optional(),
  outcome: z.enum(['ok', 'deadline', 'cancelled', 'failed']).optional(),
  stages: z.record(z.string(), z.number()),
});

/** What a node needs to know about a seed to use, pull or upload it. */
export const SeedRef = z.object({
  id: Id,
  app: Name,
  /** An object-storage copy exists (checked after upload). */
  replicated: z.boolean(),
  /** SHA-256 of manifest.json, recorded at bake: a pulled seed must match it. */
  manifestSha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type SeedRef = z.infer<typeof SeedRef>;

export const NodeWakeRequest = z.object({
  app: Name,
  deployId: Id,
  /** The deploy image's path on the control plane (an in-process node uses it directly; a remote node fetches the image by deploy id). */
  image: z.string(),
  /** How the program starts in the guest (src/wire/run.ts). */
  run: RunConfig,
  seed: SeedRef.nullable(),
  env: z.record(z.string(), z.string()),
  /** The scheduler's reason for this node, copied into the wake record. */
  placement: z.string().max(500).optional(),
  /** The app's volume (src/volume): the node checks its file, attaches it, mounts it after the gate. */
  volume: z.object({ path: z.string().min(2).max(255).startsWith('/'), sizeBytes: z.number().int().positive() }).nullable().optional(),
});
export type NodeWakeRequest = z.infer<typeof NodeWakeRequest>;

export const NodeWakeResponse = z.object({ record: WakeRecord, address: Address, vmId: z.string() });
export type NodeWakeResponse = z.infer<typeof NodeWakeResponse>;

export const NodeSleepRequest = z.object({
  app: Name,
  haveSeed: z.boolean(),
  /** false: never bake (redeploy, shutdown, a node leaving); default: bake when there is no seed. */
  bake: z.boolean().optional(),
  /** SIGTERM -> SIGKILL grace for the app, ms (default 10000). */
  graceMs: z.number().int().min(0).max(3_600_000).optional(),
  /** Pack the app's volume file as backup BACKUP_ID once the VM is gone (step backup_volume; uploaded later). */
  backupId: Id.optional(),
});
export type NodeSleepRequest = z.infer<typeof NodeSleepRequest>;

export const BakedSeed = z.object({
  seedId: Id,
  bytesApparent: z.number(),
  bytesAllocated: z.number(),
  manifestSha256: z.string(),
});
export const NodeSleepResponse = z.object({
  baked: BakedSeed.nullable(),
  error: z.string().nullable(),
  /** How the app ended after SIGTERM (null: no app ran; absent: no VM ran on the node). */
  exit: z.object({ code: z.number().int().nullable(), signal: z.string().nullable() }).nullable().optional(),
  /** SIGTERM until the app was gone, ms. */
  shutdownMs: z.number().optional(),
  /** No VM of the app ran on the node. */
  gone: z.boolean().optional(),
  /** Time of each step on the node (stop_app, keep_logs, bake_or_delete...), ms. */
  stages: z.record(z.string(), z.number()).optional(),
  /** The packed volume backup (backupId asked for, the node has object storage and the file). */
  backup: z.lazy(() => VolumePacked).nullable().optional(),
});
export type NodeSleepResponse = z.infer<typeof NodeSleepResponse>;

/** A volume file packed on its node (src/volume/backup.ts): compressed bytes, their SHA-256, the file's apparent size. */
export const VolumePacked = z.object({ sha256: z.string().regex(/^[0-9a-f]{64}$/), bytes: z.number(), apparentBytes: z.number(), ms: z.number() });
export type VolumePacked = z.infer<typeof VolumePacked>;
/** A volume backup uploaded, downloaded or imported: compressed bytes moved, ms. */
export const VolumeTransferResult = z.object({ bytes: z.number(), ms: z.number() });
export type VolumeTransferResult = z.infer<typeof VolumeTransferResult>;
export const VolumeUploadRequest = z.object({ key: z.string().min(1).max(400), sha256: z.string().regex(/^[0-9a-f]{64}$/) });

export const NodeUploadResponse = z.object({ bytesCompressed: z.number(), ms: z.number() });
export type NodeUploadResponse = z.infer<typeof NodeUploadResponse>;

export const NodeEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('app_exit'), app: Name, vmId: z.string(), code: z.number().nullable(), signal: z.string().nullable() }),
  z.object({ type: z.literal('seed_evicted'), seedId: Id }),
]);
export type NodeEvent = z.infer<typeof NodeEvent>;

/** A node's heartbeat: who it is, where its API listens, what it runs and holds. */
export const NodeStatus = z.object({
  name: NodeName,
  url: z.string().url(),
  /** Most VMs it will run at once. */
  capacity: z.number().int().min(0),
  running: z.array(z.object({ app: Name, vmId: z.string() })),
  seeds: z.array(Id),
  /** Events since the last acknowledged heartbeat. */
  events: z.array(NodeEvent).max(10_000),
  /** Wake admission: most wakes at once, running and queued now, and the apps whose wakes wait (oldest first). */
  wakes: z.object({ limit: z.number().int().min(1), running: z.number().int().min(0), queued: z.number().int().min(0), queuedApps: z.array(Name).max(10_000) }).optional(),
  /** The node is shutting down (its VMs are already deleted): take it out of scheduling now. */
  leaving: z.boolean().optional(),
  /**
   * The node is about to shut down and still serves its API: schedule nothing more on it and
   * sleep its apps gracefully now (drain, SIGTERM, grace, a sleep record each); answered when done.
   */
  draining: z.boolean().optional(),
  /** An https:// node: the SHA-256 fingerprint of the certificate its API presents (pinned by the control plane at join). */
  tlsFingerprint: z.string().max(200).optional(),
});
export type NodeStatus = z.infer<typeof NodeStatus>;

/** The control plane's answer: VMs the node must stop (it runs them, but they were placed elsewhere). */
export const HeartbeatResponse = z.object({ stop: z.array(z.object({ app: Name, vmId: z.string() })) });
export type HeartbeatResponse = z.infer<typeof HeartbeatResponse>;

export const NodeInfo = z.object({
  name: z.string(),
  url: z.string(),
  state: z.enum(['up', 'down']),
  local: z.boolean(),
  capacity: z.number(),
  running: z.number(),
  seeds: z.number(),
  last_heartbeat_at: z.string().nullable(),
});
export const NodesResponse = z.object({ nodes: z.array(NodeInfo) });
export type NodeInfo = z.infer<typeof NodeInfo>;
