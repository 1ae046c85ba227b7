// The fake's microVM: Firecracker's API state machine and the files it opens.
// Every path is resolved against the process's working folder, as Firecracker
// does. Rules (400 + {fault_message} unless noted):
// - M1 "Pre-boot only" operations (spec summaries of PUT /boot-source,
//   /drives/{id}, /machine-config, /network-interfaces/{id}, /vsock, and
//   InstanceStart itself) are refused once the VM started or was loaded.
// - M2 PUT /snapshot/load "Only accepted on a fresh Firecracker process (before
//   configuring any resource other than the Logger and Metrics)" (spec).
// - M3 "Post-boot only" operations (spec: PATCH /drives/{id},
//   PATCH /network-interfaces/{id}, PUT /snapshot/create) and PATCH /vm are
//   refused before the VM started or was loaded.
// - M4 PUT /snapshot/create: "The microVM should be in the `Paused` state" (spec).
// - M5 InstanceStart needs a boot source (Firecracker: "Cannot start microvm
//   without kernel configuration").
// - M6 A path parameter must equal the body's id (drive_id, iface_id).
// - F1 PUT /boot-source opens kernel_image_path and initrd_path; PUT /drives
//   opens path_on_host (read-write unless is_read_only): a missing file fails.
// - F2 /snapshot/load opens snapshot_path and the memory file, then re-opens
//   every drive at the path recorded at snapshot time and binds the vsock
//   socket ("These host-resources need to be accessible at the same relative
//   paths to the new Firecracker process as they were to the original one",
//   snapshot-support.md, "Loading snapshots"). On failure "the current
//   Firecracker process is ended" (same section): the fake exits after answering.
// - F3 /snapshot/create writes snapshot_path and mem_file_path; their folder must exist.
// - The loaded VM is Paused unless resume_vm (same section).
import { access, constants, readFile, writeFile } from 'node:fs/promises';
import { FakeGuest, type GuestMemory } from './guest.ts';
import { FakeVsock } from './vsock.ts';

export type VmState = 'Not started' | 'Running' | 'Paused';
export class Fault extends Error {
  constructor(message: string, readonly fatal = false) {
    super(message);
  }
}

interface Drive { drive_id: string; path_on_host: string; is_read_only: boolean }
interface Snapshot { magic: 'fake-firecracker-snapshot'; drives: Drive[]; vsock: { guest_cid: number; uds_path: string } | null; ifaces: string[]; machine: unknown }
type Body = Record<string, any>;

const PRE_BOOT = new Set(['PUT /boot-source', 'PUT /drives/{drive_id}', 'PUT /machine-config', 'PUT /network-interfaces/{iface_id}', 'PUT /vsock', 'PUT /cpu-config', 'PUT /entropy', 'PATCH /machine-config']);
const POST_BOOT = new Set(['PATCH /drives/{drive_id}', 'PATCH /network-interfaces/{iface_id}', 'PUT /snapshot/create', 'PATCH /vm']);

async function mustOpen(path: string, what: string, write = false): Promise<void> {
  try {
    await access(path, constants.R_OK | (write ? constants.W_OK : 0));
  } catch (err) {
    throw new Fault(`${what}: ${(err as Error).message}`);
  }
}

export class FakeMicroVm {
  state: VmState = 'Not started';
  private configured = false;
  private loaded = false;
  private bootSource: Body | null = null;
  private machine: unknown = null;
  private readonly drives = new Map<string, Drive>();
  private readonly ifaces = new Set<string>();
  private vsockCfg: { guest_cid: number; uds_path: string } | null = null;
  readonly vsock: FakeVsock;
  readonly guest: FakeGuest;

  constructor(log: (o: object) => void, bootMs: number) {
    this.vsock = new FakeVsock(log);
    this.guest = new FakeGuest(this.vsock, () => this.rootDisk(), bootMs);
  }

  private rootDisk(): string | null {
    return [...this.drives.values()][0]?.path_on_host ?? null;
  }

  /** Handle one validated request (`key` is METHOD + spec path template). */
  async handle(key: string, params: Record<string, string>, body: Body): Promise<void> {
    const started = this.state !== 'Not started';
    if (PRE_BOOT.has(key) && started) throw new Fault('The requested operation is not supported after starting the microVM.'); // M1
    if (POST_BOOT.has(key) && !started) throw new Fault('The requested operation is not supported before starting the microVM.'); // M3
    const id = params.drive_id ?? params.iface_id;
    if (id !== undefined && id !== (body.drive_id ?? body.iface_id)) throw new Fault('The id from the path does not match the id from the body!'); // M6
    switch (key) {
      case 'PUT /boot-source':
        await mustOpen(body.kernel_image_path, 'Invalid kernel path'); // F1
        if (body.initrd_path !== undefined) await mustOpen(body.initrd_path, 'Invalid initrd path');
        this.bootSource = body;
        break;
      case 'PUT /drives/{drive_id}':
        await mustOpen(body.path_on_host, 'Unable to create the block device', !body.is_read_only); // F1
        this.drives.set(body.drive_id, { drive_id: body.drive_id, path_on_host: body.path_on_host, is_read_only: body.is_read_only });
        break;
      case 'PATCH /drives/{drive_id}': {
        const d = this.drives.get(body.drive_id);
        if (!d) throw new Fault(`Invalid block device ID: ${body.drive_id}`);
        if (body.path_on_host !== undefined) await mustOpen(body.path_on_host, 'Unable to patch the block device', !d.is_read_only);
        d.path_on_host = body.path_on_host ?? d.path_on_host;
        return; // not a configuration step
      }
      case 'PUT /machine-config':
        this.machine = body;
        break;
      case 'PUT /network-interfaces/{iface_id}':
        this.ifaces.add(body.iface_id);
        break;
      case 'PUT /vsock':
        this.vsockCfg = { guest_cid: body.guest_cid, uds_path: body.uds_path };
        break;
      case 'PUT /actions':
        if (body.action_type !== 'InstanceStart') return;
        if (started) throw new Fault('The requested operation is not supported after starting the microVM.'); // M1
        if (!this.bootSource) throw new Fault('Cannot start microvm without kernel configuration.'); // M5
        if (this.vsockCfg) await this.vsock.bind(this.vsockCfg.uds_path).catch((e: Error) => { throw new Fault(`Error binding to host-side Unix socket: ${e.message}`); });
        this.state = 'Running';
        this.vsock.setRunning(true);
        this.guest.start();
        return;
      case 'PATCH /vm':
        this.state = body.state === 'Paused' ? 'Paused' : 'Running';
        this.vsock.setRunning(this.state === 'Running', this.loaded && this.state === 'Running');
        if (this.state === 'Running') this.loaded = false; // the guest handles the transport reset once
        return;
      case 'PUT /snapshot/create':
        if (this.state !== 'Paused') throw new Fault('Cannot create a snapshot while the microVM is running; pause it first.'); // M4
        await this.create(body);
        return;
      case 'PUT /snapshot/load':
        if (started || this.configured) throw new Fault('Loading a microVM snapshot not allowed after configuring boot-specific resources.'); // M2
        try {
          await this.load(body);
        } catch (err) {
          throw new Fault(`Load snapshot error: ${(err as Error).message}`, true); // F2: the process ends
        }
        return;
      default:
        return;
    }
    this.configured = true;
  }

  private async create(body: Body): Promise<void> {
    const snap: Snapshot = { magic: 'fake-firecracker-snapshot', drives: [...this.drives.values()], vsock: this.vsockCfg, ifaces: [...this.ifaces], machine: this.machine };
    try {
      await writeFile(body.snapshot_path, JSON.stringify(snap)); // F3
      await writeFile(body.mem_file_path, JSON.stringify(this.guest.memory));
    } catch (err) {
      throw new Fault(`Cannot create snapshot: ${(err as Error).message}`);
    }
  }

  private async load(body: Body): Promise<void> {
    const snap = JSON.parse(await readFile(body.snapshot_path, 'utf8')) as Snapshot; // F2
    if (snap.magic !== 'fake-firecracker-snapshot') throw new Error('invalid snapshot state file');
    const memPath: string = body.mem_backend?.backend_path ?? body.mem_file_path;
    const memory = JSON.parse(await readFile(memPath, 'utf8')) as GuestMemory;
    if (memory.magic !== 'fake-guest-memory') throw new Error('invalid memory file');
    for (const d of snap.drives) {
      await mustOpen(d.path_on_host, `Failed to restore block device ${d.drive_id}`, !d.is_read_only);
      this.drives.set(d.drive_id, { ...d });
    }
    for (const o of (body.network_overrides ?? []) as { iface_id: string }[]) {
      if (!snap.ifaces.includes(o.iface_id)) throw new Error(`network override: unknown iface_id ${o.iface_id}`);
    }
    this.vsockCfg = snap.vsock && { ...snap.vsock, uds_path: body.vsock_override?.uds_path ?? snap.vsock.uds_path };
    if (this.vsockCfg) await this.vsock.bind(this.vsockCfg.uds_path);
    this.machine = snap.machine;
    this.guest.restore(memory);
    this.loaded = true;
    this.state = 'Paused';
    if (body.resume_vm === true) await this.handle('PATCH /vm', {}, { state: 'Resumed' });
  }
}
