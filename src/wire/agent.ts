// Host <-> guest agent protocol, version 2. Newline-delimited JSON over any
// byte stream (virtio-serial under QEMU, vsock under Firecracker). The host end
// is src/guest/channel.ts; the guest end is the static C agent in
// guest/agent/ (protocol.c), held to these schemas by the conformance test
// (src/guest/conformance.test.ts), which drives the real binary on the host.
//
// Limits the agent enforces (and the conformance test checks):
// - one message is one line of at most MAX_LINE_BYTES bytes (newline excluded);
//   a longer line is answered with AGENT_PROTOCOL and skipped;
// - every request carries an integer `id`; a line that is not a JSON object,
//   has no usable `id`, names an unknown op or has a field of the wrong type
//   gets `{type:"result", id, ok:false, error:{code:"AGENT_PROTOCOL"}}` (id -1
//   when the id itself is unusable), and the agent keeps serving.
import { z } from 'zod';

export const PROTOCOL_VERSION = 2;
export const MAX_LINE_BYTES = 1 << 20;

/**
 * Env sealed to the agent's X25519 key: ECDH(host ephemeral key, agent key)
 * -> HKDF-SHA256(salt = epk || agent pubkey, info = SEAL_INFO) -> 32-byte key
 * -> ChaCha20-Poly1305 (IETF, 12-byte nonce, 16-byte tag). The plaintext is a
 * JSON object of strings: the app's complete environment.
 */
export const SEAL_INFO = 'thaw-env-v2';
/** Canonical, padded base64 (what Buffer.toString('base64') writes and libsodium decodes). */
const B64 = z.string().max(MAX_LINE_BYTES).regex(/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/);
/** A string C can carry: no NUL byte. */
const CStr = z.string().regex(/^[^\0]*$/, 'must not contain NUL');
export const SealedEnv = z.object({
  epk: B64, // host ephemeral public key, raw 32 bytes
  nonce: B64, // 12 bytes
  ct: B64,
  tag: B64, // 16 bytes
});
export type SealedEnv = z.infer<typeof SealedEnv>;

const Id = z.number().int().min(0).max(2 ** 31 - 1);
const Ping = z.object({ op: z.literal('ping') });
/** Everything the agent needs to start any program: no file in the guest is read to decide how. */
const StartApp = z.object({
  op: z.literal('start_app'),
  /** argv[0] is a path inside the guest's root (or a name looked up in PATH from the env). */
  argv: z.array(CStr.min(1)).min(1).max(4096),
  cwd: CStr.max(4096).startsWith('/'),
  uid: z.number().int().min(0).max(2 ** 31 - 1),
  gid: z.number().int().min(0).max(2 ** 31 - 1),
  env: SealedEnv,
  port: z.number().int().min(1).max(65535),
  /** Milliseconds the agent waits for the app to listen before it reports a timeout. */
  listen_timeout_ms: z.number().int().positive(),
});
/** SIGTERM to the app's process group, SIGKILL after timeout_ms. */
const StopApp = z.object({ op: z.literal('stop_app'), timeout_ms: z.number().int().positive() });
/** Before a bake: forget the app log, kill stray processes, empty /tmp, check the kernel log, write the canary, sync. */
const Scrub = z.object({ op: z.literal('scrub'), canary_b64: B64.min(4).max(87384) }); // 1 to 65536 bytes
/** The agent exits after answering and init starts a fresh one (new key, a heap that never saw env). */
const Respawn = z.object({ op: z.literal('respawn') });
/** Step the guest's realtime clock to epoch_us (microseconds since the epoch, the host's clock when it sent this). */
const SetClock = z.object({ op: z.literal('set_clock'), epoch_us: z.number().int().nonnegative() });
/** Move the clock by delta_us: with slew and |delta| <= 100 ms gradually (adjtime), else stepped. */
const AdjustClock = z.object({ op: z.literal('adjust_clock'), delta_us: z.number().int(), slew: z.boolean() });
const Reseed = z.object({ op: z.literal('reseed'), entropy_b64: B64 });
/** Liveness gate: canary read with O_DIRECT, write/fsync/direct-read round trip, kernel log scan. */
const Gate = z.object({ op: z.literal('gate'), canary_sha256: z.string().regex(/^[0-9a-f]{64}$/).nullable() });
const Logs = z.object({ op: z.literal('logs'), max_bytes: z.number().int().positive() });
const Exec = z.object({ op: z.literal('exec'), argv: z.array(CStr.min(1)).min(1), timeout_ms: z.number().int().positive() });
/** User-space processes in the guest (kernel threads excluded). */
const Ps = z.object({ op: z.literal('ps') });
/** A block device under /dev (the volume's disk, e.g. /dev/vdb). */
const Device = z.string().max(64).regex(/^\/dev\/[a-z0-9]+$/);
/** A normalised absolute path other than /: components neither empty, "." nor "..". */
const MountPath = CStr.max(255).regex(/^(\/[^/]+)+$/).refine((p) => !p.split('/').some((c) => c === '.' || c === '..'), 'no . or .. components');
/**
 * Mount the app's volume (ext4 on `device`) at `path`, made if missing: after the gate (refused
 * with GATE_FAILED after a failed one) and before start_app (refused while an app runs).
 */
const MountVolume = z.object({ op: z.literal('mount_volume'), device: Device, path: MountPath });
/**
 * Before every pause: sync, unmount `path` (stray processes that keep it busy are killed),
 * drop `device`'s buffer cache. Refused while an app runs (stop_app first). A scrub refuses
 * to bake while any disk but the root is mounted.
 */
const UnmountVolume = z.object({ op: z.literal('unmount_volume'), device: Device, path: MountPath });

export const Request = z.discriminatedUnion('op', [Ping, StartApp, StopApp, Scrub, Respawn, SetClock, AdjustClock, Reseed, Gate, Logs, Exec, Ps, MountVolume, UnmountVolume]);
export type Request = z.infer<typeof Request>;
export type Op = Request['op'];
export const OPS = Request.options.map((o) => o.shape.op.value) as readonly Op[];
export const RequestEnvelope = z.object({ id: Id }).and(Request);
export type RequestEnvelope = z.infer<typeof RequestEnvelope>;

export const Hello = z.object({
  version: z.number().int(),
  agent_pid: z.number().int(),
  boot_id: z.string(),
  /** Raw X25519 public key, base64. */
  pubkey: z.string(),
  app_pid: z.number().int().nullable(),
  uptime_ms: z.number(),
  /** The guest's realtime clock when it wrote this, microseconds since the epoch. */
  clock_us: z.number().int(),
});
export type Hello = z.infer<typeof Hello>;

export const GateResult = z.object({
  ok: z.boolean(),
  canary_ok: z.boolean().nullable(),
  roundtrip_ok: z.boolean(),
  fs_errors: z.array(z.string()),
  ms: z.number(),
  reason: z.string().nullable(),
});
export type GateResult = z.infer<typeof GateResult>;

/** A guest process: rss_kib is its resident memory in KiB. */
export const Process = z.object({ pid: z.number().int(), ppid: z.number().int(), comm: z.string(), rss_kib: z.number().int() });

/** Result payloads, by op. */
export const Results = {
  ping: Hello,
  start_app: z.object({ pid: z.number().int(), listen_ms: z.number() }),
  stop_app: z.object({ pid: z.number().int().nullable(), code: z.number().int().nullable(), signal: z.string().nullable() }),
  scrub: z.object({ canary_path: z.string(), ms: z.number() }),
  respawn: z.object({ ok: z.literal(true) }),
  set_clock: z.object({ guest_us: z.number().int() }),
  adjust_clock: z.object({ guest_us: z.number().int(), stepped: z.boolean() }),
  reseed: z.object({ ok: z.literal(true) }),
  gate: GateResult,
  logs: z.object({ text: z.string() }),
  exec: z.object({ code: z.number().int().nullable(), stdout: z.string(), stderr: z.string() }),
  ps: z.object({ processes: z.array(Process) }),
  /** mounted: false in the agent's test mode (nothing is mounted on a host). */
  mount_volume: z.object({ device: z.string(), path: z.string(), mounted: z.boolean(), ms: z.number() }),
  unmount_volume: z.object({ path: z.string(), was_mounted: z.boolean(), killed_stray: z.boolean(), ms: z.number() }),
} satisfies Record<Op, z.ZodTypeAny>;
export type ResultOf<O extends Op> = z.infer<(typeof Results)[O]>;

/** Error codes the agent may answer with (each is in src/errors.ts). */
export const AGENT_ERROR_CODES = ['AGENT_PROTOCOL', 'AGENT_ERROR', 'GATE_FAILED', 'APP_CRASHED', 'APP_START_TIMEOUT', 'VOLUME_INVALID'] as const;

/** Guest -> host messages. */
export const GuestMessage = z.union([
  z.object({ type: z.literal('hello'), hello: Hello }),
  z.object({ type: z.literal('result'), id: z.number().int(), ok: z.literal(true), data: z.unknown() }),
  z.object({ type: z.literal('result'), id: z.number().int(), ok: z.literal(false), error: z.object({ code: z.enum(AGENT_ERROR_CODES), message: z.string() }) }),
  z.object({ type: z.literal('app_exit'), pid: z.number().int(), code: z.number().int().nullable(), signal: z.string().nullable(), log_tail: z.string() }),
]);
export type GuestMessage = z.infer<typeof GuestMessage>;

/** Where the canary lives inside the guest (on the root disk). */
export const CANARY_PATH = '/var/lib/thaw/canary';
/** Runtime folder of the agent, on tmpfs so nothing in it reaches the disk image. */
export const RUN_DIR = '/run/thaw';
/** The volume's disk in the guest: the second virtio-blk device (QEMU adds it right after the root's). */
export const VOLUME_DEVICE = '/dev/vdb';
/** Name of the virtio-serial port the agent opens. */
export const AGENT_PORT_NAME = 'thaw.agent';
/** vsock port the agent listens on (Firecracker). */
export const AGENT_VSOCK_PORT = 1024;
