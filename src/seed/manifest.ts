// A seed is a folder: mem.ram (guest memory), state.bin (CPU/device state),
// disk.img (raw, sparse copy of the disk at the same instant) and manifest.json,
// written last. A seed without a complete, valid manifest does not exist.
import { z } from 'zod';

/** 2: the static agent (agent_protocol recorded); seeds of version 1 carry the Node agent and are refused. */
export const MANIFEST_VERSION = 2;
export const SEED_FILES = ['mem.ram', 'state.bin', 'disk.img'] as const;
export type SeedFileName = (typeof SEED_FILES)[number];

const FileEntry = z.object({
  /** Apparent size in bytes. */
  bytes: z.number().int().nonnegative(),
  /** Bytes allocated on disk when baked (sparse files are smaller). */
  allocated: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type FileEntry = z.infer<typeof FileEntry>;

export const Manifest = z.object({
  version: z.literal(MANIFEST_VERSION),
  app: z.string(),
  deploy_id: z.string(),
  seed_id: z.string(),
  created_at: z.string(),
  driver: z.enum(['qemu', 'firecracker']),
  accel: z.enum(['kvm', 'tcg']),
  machine: z.object({
    mem_mib: z.number().int().positive(),
    vcpus: z.number().int().positive(),
    cmdline: z.string(),
    guest_port: z.number().int(),
    /** The VM's network backend: QEMU saves user-mode's (slirp) state in the stream, so a seed restores only onto the same kind. Absent: user. */
    net: z.enum(['user', 'tap']).optional(),
  }),
  /** Identity of the boot assets the memory image was made with. */
  kernel_sha256: z.string(),
  initrd_sha256: z.string(),
  files: z.object({ 'mem.ram': FileEntry, 'state.bin': FileEntry, 'disk.img': FileEntry }),
  /** Canary written inside the guest right before the bake; the liveness gate reads it back with O_DIRECT. */
  canary: z.object({ path: z.string(), sha256: z.string().regex(/^[0-9a-f]{64}$/) }),
  /** Public X25519 key of the guest agent frozen in the seed: env for a thaw is sealed to it. */
  agent_pubkey: z.string(),
  /** Protocol version of the agent frozen in the seed (src/wire/agent.ts PROTOCOL_VERSION). */
  agent_protocol: z.number().int(),
  /** Timings of the bake, for the record. */
  bake: z.object({ pause_ms: z.number(), total_ms: z.number() }),
});
export type Manifest = z.infer<typeof Manifest>;
