// Host <-> guest agent protocol. Newline-delimited JSON over any byte stream
// (virtio-serial under QEMU, vsock under Firecracker). Shared by the host
// (src/guest/channel.ts) and the guest agent (src/guest/agent/main.ts), which is
// bundled with these schemas into the guest image.
import { z } from 'zod';

export const PROTOCOL_VERSION = 1;

/** Env sealed to the agent's X25519 key: ECDH(host ephemeral, agent) -> HKDF-SHA256 -> AES-256-GCM. */
export const SealedEnv = z.object({
  epk: z.string(), // host ephemeral public key, raw 32 bytes, base64
  iv: z.string(),
  ct: z.string(),
  tag: z.string(),
});
export type SealedEnv = z.infer<typeof SealedEnv>;

const Ping = z.object({ op: z.literal('ping') });
const StartApp = z.object({
  op: z.literal('start_app'),
  env: SealedEnv,
  port: z.number().int().min(1).max(65535),
  /** Milliseconds the agent waits for the app to listen before it reports a timeout. */
  listen_timeout_ms: z.number().int().positive(),
});
const StopApp = z.object({ op: z.literal('stop_app'), timeout_ms: z.number().int().positive() });
/** Before a bake: delete the env file and app log, kill stray processes, empty /tmp, check the kernel log, write the canary, sync. */
const Scrub = z.object({ op: z.literal('scrub'), canary_b64: z.string() });
/** Agent replaces itself with a fresh process (so its heap, which saw secrets, is freed). */
const Respawn = z.object({ op: z.literal('respawn') });
const SetClock = z.object({ op: z.literal('set_clock'), epoch_ms: z.number() });
const Reseed = z.object({ op: z.literal('reseed'), entropy_b64: z.string() });
/** Liveness gate: canary read with O_DIRECT, write/fsync/direct-read round trip, kernel log scan. */
const Gate = z.object({ op: z.literal('gate'), canary_sha256: z.string().regex(/^[0-9a-f]{64}$/).nullable() });
const Logs = z.object({ op: z.literal('logs'), max_bytes: z.number().int().positive() });
const Exec = z.object({ op: z.literal('exec'), argv: z.array(z.string()).min(1), timeout_ms: z.number().int().positive() });

export const Request = z.discriminatedUnion('op', [Ping, StartApp, StopApp, Scrub, Respawn, SetClock, Reseed, Gate, Logs, Exec]);
export type Request = z.infer<typeof Request>;
export type Op = Request['op'];
export const RequestEnvelope = z.object({ id: z.number().int() }).and(Request);
export type RequestEnvelope = z.infer<typeof RequestEnvelope>;

export const Hello = z.object({
  version: z.number().int(),
  agent_pid: z.number().int(),
  boot_id: z.string(),
  pubkey: z.string(),
  app_pid: z.number().int().nullable(),
  uptime_ms: z.number(),
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

/** Result payloads, by op. */
export const Results = {
  ping: Hello,
  start_app: z.object({ pid: z.number().int(), listen_ms: z.number() }),
  stop_app: z.object({ pid: z.number().int().nullable(), code: z.number().int().nullable(), signal: z.string().nullable() }),
  scrub: z.object({ canary_path: z.string(), ms: z.number() }),
  respawn: z.object({ ok: z.literal(true) }),
  set_clock: z.object({ ok: z.literal(true) }),
  reseed: z.object({ ok: z.literal(true) }),
  gate: GateResult,
  logs: z.object({ text: z.string() }),
  exec: z.object({ code: z.number().int().nullable(), stdout: z.string(), stderr: z.string() }),
} satisfies Record<Op, z.ZodTypeAny>;
export type ResultOf<O extends Op> = z.infer<(typeof Results)[O]>;

/** Guest -> host messages. */
export const GuestMessage = z.union([
  z.object({ type: z.literal('hello'), hello: Hello }),
  z.object({ type: z.literal('result'), id: z.number().int(), ok: z.literal(true), data: z.unknown() }),
  z.object({ type: z.literal('result'), id: z.number().int(), ok: z.literal(false), error: z.object({ code: z.string(), message: z.string() }) }),
  z.object({ type: z.literal('app_exit'), pid: z.number().int(), code: z.number().int().nullable(), signal: z.string().nullable(), log_tail: z.string() }),
]);
export type GuestMessage = z.infer<typeof GuestMessage>;

/** Where the canary lives inside the guest (on the root disk). */
export const CANARY_PATH = '/var/lib/thaw/canary';
/** Env file, on tmpfs so its bytes never reach the disk image. */
export const ENV_FILE = '/run/thaw/env';
export const APP_LOG = '/run/thaw/app.log';
/** Name of the virtio-serial port the agent opens. */
export const AGENT_PORT_NAME = 'thaw.agent';
