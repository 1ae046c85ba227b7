// The Hypervisor interface: one short method per VMM call. Drivers:
// - qemu.ts (QMP over a unix socket; runs here under TCG, or KVM where it works)
// - firecracker.ts (Firecracker's HTTP API over a unix socket; built against
//   its published OpenAPI spec, not runnable on this host).
import type { Duplex } from 'node:stream';

export type Accel = 'kvm' | 'tcg';
export type DriverName = 'qemu' | 'firecracker';

/** Everything needed to start one VM. Paths are absolute. */
export interface VmSpec {
  /** Unique id; also names the runtime folder. */
  id: string;
  /** Runtime folder owned by this VM (sockets, console log, overlay disk). Removed by destroy(). */
  dir: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  memMiB: number;
  vcpus: number;
  /** Disk the VM writes to. For a thaw this is a copy-on-write overlay over the seed's disk. */
  disk: string;
  /** Format of `disk` ('raw' or 'qcow2'). */
  diskFormat: 'raw' | 'qcow2';
  /** File that backs guest memory. Cold boot: written through (shared). Restore: mapped privately. */
  memFile: string;
  /** TCP port inside the guest that the app listens on. */
  guestPort: number;
  /** Host port (127.0.0.1) forwarded to guestPort (user-mode network only; ignored with `tap`). */
  hostPort: number;
  /**
   * The VM's own network (src/network/): a TAP device inside a network
   * namespace, where the app is reached at `address`. Absent: QEMU user-mode
   * networking with a hostfwd on hostPort (hosts without root or /dev/net/tun;
   * tenants are NOT isolated from the host).
   */
  tap?: VmTap;
  /** Run the VMM as this unprivileged uid/gid, seccomp-sandboxed (src/hypervisor/jail.ts). Absent: as the node's user. */
  jail?: { uid: number; gid: number };
  /**
   * The app's volume (raw ext4), attached as the second disk (/dev/vdb), written through to the
   * host. A restore attaches the file named here: the app's current volume, never a copy in a seed.
   */
  volume?: string;
}

export interface VmTap {
  /** Network namespace name (`/run/netns/NAME`) the VMM runs in. */
  netns: string;
  /** TAP device inside that namespace. */
  name: string;
  /** Where the host (router) reaches the app. */
  address: { host: string; port: number };
}

/** A running (or paused) VM process. */
export interface VmHandle {
  readonly id: string;
  readonly spec: VmSpec;
  readonly pid: number;
  /** Serial console output of the guest. */
  readonly consoleLog: string;
  /** Resolves when the VMM process exits (never rejects). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Where the host reaches the app. */
  readonly appAddress: { host: string; port: number };
}

/** Files that make up a VM snapshot (besides the disk, which the caller copies). */
export interface SnapshotFiles {
  /** CPU and device state. */
  state: string;
  /** Guest memory image. */
  mem: string;
}

export interface Hypervisor {
  readonly name: DriverName;
  /** Format of the per-VM disk this driver boots from: a qcow2 overlay (QEMU) or a raw copy-on-write copy (Firecracker). */
  readonly diskFormat: 'raw' | 'qcow2';
  /**
   * Whether openAgentChannel() may be called on a restored VM before resume().
   * QEMU: yes (the virtio-serial chardev is host-side). Firecracker: no; after a
   * snapshot load it holds vsock traffic until the running guest has handled the
   * transport-reset event, so the channel opens only after resume().
   */
  readonly agentChannelBeforeResume: boolean;
  /**
   * Whether the VMM opens a seed's memory image read-only (Firecracker: File::open + MAP_PRIVATE).
   * Absent/false (QEMU 7.2): it opens it read-write, so a bake grants the VMMs' group write (jail.ts).
   */
  readonly memImageReadOnly?: boolean;
  /** Accelerator this driver uses on this host (probed once, cached). */
  accel(): Promise<Accel>;
  /** Start a VM and let it run from its kernel entry point. */
  boot(spec: VmSpec): Promise<VmHandle>;
  /** Start a VM from a snapshot; it stays paused until resume(). spec.memFile must be snap.mem. */
  restore(spec: VmSpec, snap: SnapshotFiles): Promise<VmHandle>;
  /** Pause all vCPUs. Storage is flushed when this returns. */
  pause(vm: VmHandle): Promise<void>;
  /** Resume vCPUs. */
  resume(vm: VmHandle): Promise<void>;
  /** Save the (paused) VM's CPU/device state to snap.state and make sure snap.mem holds its memory. */
  snapshot(vm: VmHandle, snap: SnapshotFiles): Promise<void>;
  /**
   * Open the host end of the guest agent channel (virtio-serial for QEMU, vsock for Firecracker).
   * Firecracker: retries the vsock handshake until the guest listens or a deadline (AGENT_TIMEOUT).
   */
  openAgentChannel(vm: VmHandle): Promise<Duplex>;
  /** Kill the VMM process and remove spec.dir. Idempotent, never throws. */
  destroy(vm: VmHandle): Promise<void>;
}
