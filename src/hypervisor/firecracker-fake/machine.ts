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
// - F4 PATCH /drives/{id} (post-boot, so also on a loaded, paused VM) reopens
//   the drive at path_on_host; the known workaround of firecracker#1974 and the
//   way to point a restored drive at a new file (firecracker#4036).
// - The loaded VM is Paused unless resume_vm (same section).
// Paths go through host.ts (J1 the jail's root, J2 the VMM's own uid, N1 TAPs).
import { readFile, writeFile } from 'node:fs/promises';
import { FakeGuest, type GuestMemory } from './guest.ts';
import { at, checkTap, fileFacts, mustAccess } from './host.ts';
import { FakeVsock } from './vsock.ts';

export type VmState = 'Not started' | 'Running' | 'Paused';
export class Fault extends Error {
  constructor(message: string, readonly fatal = false) {
    super(message);
  }
}

interface Drive { drive_id: string; path_on_host: string; is_read_only: boolean }
interface Iface { iface_id: string; host_dev_name: string }
interface Snapshot { magic: 'fake-firecracker-snapshot'; drives: Drive[]; vsock: { guest_cid: number; uds_path: string } | null; ifaces: Iface[]; machine: unknown }
type Body = Record<string, any>;

const PRE_BOOT = new Set(['PUT /boot-source', 'PUT /drives/{drive_id}', 'PUT /machine-config', 'PUT /network-interfaces/{iface_id}', 'PUT /vsock', 'PUT /cpu-config', 'PUT /entropy', 'PATCH /machine-config']);
const POST_BOOT = new Set(['PATCH /drives/{drive_id}', 'PATCH /network-interfaces/{iface_id}', 'PUT /snapshot/create', 'PATCH /vm']);

async function mustOpen(path: string, what: string, write = false): Promise<void> {
  await mustAccess(path, what, write).catch((err: Error) => {
    throw new Fault(err.message);
  });
}

function tap(name: string): void {
  try {
    checkTap(name); // N1
  } catch (err) {
    throw new Fault((err as Error).message);
  }
}

export class FakeMicroVm {
  state: VmState = 'Not started';
  private configured = false;
  private loaded = false;
  private bootSource: Body | null = null;
  private machine: unknown = null;
  private readonly drives = new Map<string, Drive>();
  private readonly ifaces = new Map<string, Iface>();
  private vsockCfg: { guest_cid: number; uds_path: string } | null = null;
  readonly vsock: FakeVsock;
  readonly guest: FakeGuest;

  constructor(private readonly log: (o: object) => void, bootMs: number) {
    this.vsock = new FakeVsock(log);
    this.guest = new FakeGuest(this.vsock, () => this.rootDisk(), bootMs);
  }

  private rootDisk(): string | null {
    const d = [...this.drives.values()][0];
    return d ? at(d.path_on_host) : null;
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
        await this.logDrive(body.drive_id, body.path_on_host);
        break;
      case 'PATCH /drives/{drive_id}': {
        const d = this.drives.get(body.drive_id);
        if (!d) throw new Fault(`Invalid block device ID: ${body.drive_id}`);
        if (body.path_on_host !== undefined) await mustOpen(body.path_on_host, 'Unable to patch the block device', !d.is_read_only); // F4
        d.path_on_host = body.path_on_host ?? d.path_on_host;
        await this.logDrive(d.drive_id, d.path_on_host, 'patch');
        return; // not a configuration step
      }
      case 'PUT /machine-config':
        this.machine = body;
        break;
      case 'PUT /network-interfaces/{iface_id}':
        tap(body.host_dev_name);
        this.ifaces.set(body.iface_id, { iface_id: body.iface_id, host_dev_name: body.host_dev_name });
        break;
      case 'PUT /vsock':
        this.vsockCfg = { guest_cid: body.guest_cid, uds_path: body.uds_path };
        break;
      case 'PUT /actions':
        if (body.action_type !== 'InstanceStart') return;
        if (started) throw new Fault('The requested operation is not supported after starting the microVM.'); // M1
        if (!this.bootSource) throw new Fault('Cannot start microvm without kernel configuration.'); // M5
        if (this.vsockCfg) await this.vsock.bind(at(this.vsockCfg.uds_path)).catch((e: Error) => { throw new Fault(`Error binding to host-side Unix socket: ${e.message}`); });
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

  private async logDrive(drive: string, path: string, how = 'put'): Promise<void> {
    this.log({ drive, how, path, ...(await fileFacts(path)) });
  }

  private async create(body: Body): Promise<void> {
    const snap: Snapshot = { magic: 'fake-firecracker-snapshot', drives: [...this.drives.values()], vsock: this.vsockCfg, ifaces: [...this.ifaces.values()], machine: this.machine };
    try {
      await writeFile(at(body.snapshot_path), JSON.stringify(snap)); // F3
      await writeFile(at(body.mem_file_path), JSON.stringify(this.guest.memory));
    } catch (err) {
      throw new Fault(`Cannot create snapshot: ${(err as Error).message}`);
    }
  }

  private async load(body: Body): Promise<void> {
    await mustOpen(body.snapshot_path, 'snapshot file'); // F2, J1
    const snap = JSON.parse(await readFile(at(body.snapshot_path), 'utf8')) as Snapshot;
    if (snap.magic !== 'fake-firecracker-snapshot') throw new Error('invalid snapshot state file');
    const memPath: string = body.mem_backend?.backend_path ?? body.mem_file_path;
    // Firecracker opens the memory file read-only (File::open) and maps it MAP_PRIVATE: read access is all it needs.
    await mustOpen(memPath, 'memory file');
    const memory = JSON.parse(await readFile(at(memPath), 'utf8')) as GuestMemory;
    if (memory.magic !== 'fake-guest-memory') throw new Error('invalid memory file');
    this.log({ mem: memPath, ...(await fileFacts(memPath)) });
    for (const d of snap.drives) {
      await mustOpen(d.path_on_host, `Failed to restore block device ${d.drive_id}`, !d.is_read_only);
      this.drives.set(d.drive_id, { ...d });
      await this.logDrive(d.drive_id, d.path_on_host, 'load');
    }
    const overrides = (body.network_overrides ?? []) as Iface[];
    for (const o of overrides) {
      if (!snap.ifaces.some((i) => i.iface_id === o.iface_id)) throw new Error(`network override: unknown iface_id ${o.iface_id}`);
    }
    for (const i of snap.ifaces) {
      const name = overrides.find((o) => o.iface_id === i.iface_id)?.host_dev_name ?? i.host_dev_name;
      tap(name); // N1: the TAP the restored interface attaches to
      this.ifaces.set(i.iface_id, { iface_id: i.iface_id, host_dev_name: name });
    }
    this.vsockCfg = snap.vsock && { ...snap.vsock, uds_path: body.vsock_override?.uds_path ?? snap.vsock.uds_path };
    if (this.vsockCfg) await this.vsock.bind(at(this.vsockCfg.uds_path));
    this.machine = snap.machine;
    this.guest.restore(memory);
    this.loaded = true;
    this.state = 'Paused';
    if (body.resume_vm === true) await this.handle('PATCH /vm', {}, { state: 'Resumed' });
  }
}
