// Firecracker's host-side protocols. 1) Its HTTP API over a unix socket: the request bodies Thaw sends,
// as zod schemas derived by hand from /work/shared/specs/firecracker.yaml
// (Swagger 2.0, API version 1.17.0-dev), and a tiny client that validates
// every body before sending it and turns `{fault_message}` answers into
// ThawErrors. Schemas are strict (unknown keys rejected) because Firecracker
// deserializes with serde's deny_unknown_fields; only the fields Thaw uses are
// listed, with the spec's required fields required. 2) The host-initiated
// vsock handshake (described in the spec's Vsock definition).
import type { Socket } from 'node:net';
import { Client } from 'undici';
import { z } from 'zod';
import { ThawError, type ErrorCode } from '../errors.ts';

/** definitions/BootSource: required kernel_image_path. */
export const BootSource = z.strictObject({
  kernel_image_path: z.string().min(1),
  boot_args: z.string().optional(),
  initrd_path: z.string().optional(),
});

/** definitions/Drive: required drive_id, is_root_device (virtio-block also needs path_on_host, is_read_only). */
export const Drive = z.strictObject({
  drive_id: z.string().min(1),
  is_root_device: z.boolean(),
  path_on_host: z.string().min(1),
  is_read_only: z.boolean(),
  cache_type: z.enum(['Unsafe', 'Writeback']).optional(),
  io_engine: z.enum(['Sync', 'Async']).optional(),
  partuuid: z.string().optional(),
});

/** definitions/PartialDrive (PATCH /drives/{id}, post-boot only): required drive_id. */
export const PartialDrive = z.strictObject({
  drive_id: z.string().min(1),
  path_on_host: z.string().min(1).optional(),
});

/** definitions/MachineConfiguration: required mem_size_mib, vcpu_count (1..32). */
export const MachineConfiguration = z.strictObject({
  mem_size_mib: z.number().int().positive(),
  vcpu_count: z.number().int().min(1).max(32),
  smt: z.boolean().optional(),
  track_dirty_pages: z.boolean().optional(),
  huge_pages: z.enum(['None', 'Transparent', '2M']).optional(),
});

/** definitions/NetworkInterface: required host_dev_name, iface_id. */
export const NetworkInterface = z.strictObject({
  iface_id: z.string().min(1),
  host_dev_name: z.string().min(1).max(15),
  guest_mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i).optional(),
  mtu: z.number().int().min(68).max(65535).optional(),
});

/** definitions/Vsock: required guest_cid (>= 3), uds_path. */
export const Vsock = z.strictObject({
  guest_cid: z.number().int().min(3),
  uds_path: z.string().min(1),
});

/** definitions/InstanceActionInfo: required action_type. */
export const InstanceActionInfo = z.strictObject({
  action_type: z.enum(['FlushMetrics', 'InstanceStart', 'SendCtrlAltDel']),
});

/** definitions/Vm: required state. */
export const Vm = z.strictObject({ state: z.enum(['Paused', 'Resumed']) });

/** definitions/SnapshotCreateParams: required mem_file_path, snapshot_path. */
export const SnapshotCreateParams = z.strictObject({
  snapshot_path: z.string().min(1),
  mem_file_path: z.string().min(1),
  snapshot_type: z.enum(['Full', 'Diff']).optional(),
});

/** definitions/MemoryBackend: required backend_type, backend_path. */
export const MemoryBackend = z.strictObject({
  backend_type: z.enum(['File', 'Uffd']),
  backend_path: z.string().min(1),
});

/**
 * definitions/SnapshotLoadParams: required snapshot_path; exactly one of
 * mem_backend / mem_file_path (the latter is deprecated, so Thaw only sends mem_backend).
 */
export const SnapshotLoadParams = z.strictObject({
  snapshot_path: z.string().min(1),
  mem_backend: MemoryBackend,
  resume_vm: z.boolean().optional(),
  track_dirty_pages: z.boolean().optional(),
  network_overrides: z.array(z.strictObject({ iface_id: z.string().min(1), host_dev_name: z.string().min(1).max(15) })).optional(),
  vsock_override: z.strictObject({ uds_path: z.string().min(1) }).optional(),
});

/** definitions/InstanceInfo (GET / answer): required app_name, id, state, vmm_version. */
export const InstanceInfo = z.object({
  app_name: z.string(),
  id: z.string(),
  state: z.enum(['Not started', 'Running', 'Paused']),
  vmm_version: z.string(),
});
export type InstanceInfo = z.infer<typeof InstanceInfo>;

/** definitions/Error. */
const Fault = z.object({ fault_message: z.string() });

/** Every call Thaw makes, with the schema of its body (the path's parameter part is free). */
export const CALLS = {
  'PUT /boot-source': BootSource,
  'PUT /drives/': Drive,
  'PATCH /drives/': PartialDrive,
  'PUT /machine-config': MachineConfiguration,
  'PUT /network-interfaces/': NetworkInterface,
  'PUT /vsock': Vsock,
  'PUT /actions': InstanceActionInfo,
  'PATCH /vm': Vm,
  'PUT /snapshot/create': SnapshotCreateParams,
  'PUT /snapshot/load': SnapshotLoadParams,
} as const;
export type CallName = keyof typeof CALLS;
export type Body<C extends CallName> = z.input<(typeof CALLS)[C]>;

/** Thin client for one Firecracker process's API socket. */
export class FirecrackerApi {
  private readonly client: Client;

  constructor(readonly socketPath: string) {
    this.client = new Client('http://localhost', { socketPath, pipelining: 1 });
  }

  /** GET / (InstanceInfo). Transport errors (socket not there yet) are thrown as they are. */
  async describe(): Promise<InstanceInfo> {
    const res = await this.client.request({ method: 'GET', path: '/', headers: { accept: 'application/json' } });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw faultError('INTERNAL', 'GET /', res.statusCode, text);
    const info = InstanceInfo.safeParse(safeJson(text));
    if (!info.success) throw new ThawError('INTERNAL', `Firecracker GET / answered an invalid InstanceInfo: ${text.slice(0, 200)}`);
    return info.data;
  }

  /**
   * Send one call. `call` picks the schema; `param` is the path parameter (drive or iface id).
   * A fault answer throws ThawError(faultCode) with the fault message and HTTP status in details.
   */
  async send<C extends CallName>(call: C, body: Body<C>, faultCode: ErrorCode, param = ''): Promise<void> {
    const [method, base] = call.split(' ') as [string, string];
    const path = base + (param === '' ? '' : encodeURIComponent(param));
    if (base.endsWith('/') && param === '') throw new ThawError('INTERNAL', `Firecracker ${call} needs a path parameter`);
    const parsed = CALLS[call].safeParse(body);
    if (!parsed.success) {
      throw new ThawError('INTERNAL', `Firecracker ${method} ${path}: body does not match the API spec: ${z.prettifyError(parsed.error)}`, {
        details: { method, path },
      });
    }
    const res = await this.client.request({
      method: method as 'PUT' | 'PATCH',
      path,
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(parsed.data),
    });
    const text = await res.body.text();
    if (res.statusCode >= 200 && res.statusCode < 300) return;
    throw faultError(faultCode, `${method} ${path}`, res.statusCode, text);
  }

  async close(): Promise<void> {
    await this.client.destroy().catch(() => undefined);
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function faultError(code: ErrorCode, what: string, status: number, text: string): ThawError {
  const fault = Fault.safeParse(safeJson(text));
  const faultMessage = fault.success ? fault.data.fault_message : text.slice(0, 500);
  return new ThawError(code, `Firecracker ${what} failed (HTTP ${status}): ${faultMessage}`, {
    details: { status, fault_message: faultMessage, call: what },
  });
}

/**
 * Firecracker's host-initiated vsock handshake: send `CONNECT <port>\n`, expect `OK <n>\n`.
 * Reads with 'readable'/read() (not 'data') so that, once the listener is removed, the
 * socket is left unpaused and unread: the next 'data' listener gets any bytes that came
 * with the OK line (they are unshifted back) and everything after.
 */
export function vsockHandshake(sock: Socket, port: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    let finished = false;
    const done = (err?: ThawError): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      sock.off('readable', onReadable).off('error', onError).off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onReadable = (): void => {
      let chunk: Buffer | null;
      while (!finished && (chunk = sock.read() as Buffer | null) !== null) {
        buf = Buffer.concat([buf, chunk]);
        const nl = buf.indexOf(0x0a);
        if (nl < 0) {
          if (buf.length > 64) done(new ThawError('AGENT_PROTOCOL', `vsock handshake: no newline in ${JSON.stringify(buf.toString('latin1').slice(0, 64))}`));
          continue;
        }
        const line = buf.subarray(0, nl).toString('latin1');
        if (!/^OK \d+$/.test(line)) return done(new ThawError('AGENT_PROTOCOL', `vsock handshake: expected "OK <port>", got ${JSON.stringify(line)}`));
        const rest = buf.subarray(nl + 1);
        if (rest.length > 0) sock.unshift(rest);
        return done();
      }
    };
    const onError = (err: Error): void => done(new ThawError('AGENT_TIMEOUT', `vsock connect failed: ${err.message}`, { cause: err }));
    // Firecracker closes the connection when nothing listens on the guest port (agent not up yet).
    const onClose = (): void => done(new ThawError('AGENT_TIMEOUT', `vsock: connection closed before "OK" (nothing listening on guest port ${port} yet?)`));
    const timer = setTimeout(() => done(new ThawError('AGENT_TIMEOUT', `vsock handshake: no answer within ${timeoutMs} ms`)), timeoutMs);
    sock.on('readable', onReadable).on('error', onError).on('close', onClose);
    sock.write(`CONNECT ${port}\n`);
  });
}
