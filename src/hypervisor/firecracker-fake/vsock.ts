// The fake's vsock device, host end (Firecracker docs/vsock.md, "Host-Initiated
// Connections"): Firecracker listens on `uds_path`; the host connects, sends
// "CONNECT PORT\n", and gets "OK <host port>\n" once the guest accepted, after
// which the stream is the guest's. Rules:
// - V1 "If no one is listening, Firecracker will terminate the host connection"
//   (docs/vsock.md): no guest listener on the port → the connection is closed.
// - V2 No guest traffic while the vCPUs do not run: a CONNECT to a paused or
//   not-yet-started VM waits, and is dropped after HOLD_MS if the VM does not
//   run by then (the driver must not count on a paused guest answering).
// - V3 After a snapshot load, Firecracker holds vsock traffic until the resumed
//   guest has handled the transport-reset event the snapshot carries
//   (docs/snapshotting/snapshot-support.md, "Vsock device reset"; CHANGELOG:
//   "send VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on snapshot creation ... The event
//   will close active connections on the guest"); a pending connect is dropped
//   after about 2 s. So a CONNECT sent before resume never succeeds.
// - V4 `uds_path` is bound by Firecracker: an existing file there is EADDRINUSE.
import net from 'node:net';

/** How long a CONNECT waits for a running guest before it is dropped (V2, V3). */
export const HOLD_MS = 2000;

export type Accept = (conn: net.Socket) => void;

export class FakeVsock {
  private server: net.Server | null = null;
  private readonly ports = new Map<number, Accept>();
  private nextHostPort = 1 << 30; // docs/vsock.md's example answer is "OK 1073741824"
  private running = false;
  private readonly waiters = new Set<(reset: boolean) => void>();

  constructor(private readonly log: (o: object) => void) {}

  /** V4: bind `udsPath` (relative to the process's folder). */
  bind(udsPath: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const srv = net.createServer((c) => this.onConnection(c));
      srv.once('error', reject);
      srv.listen(udsPath, () => {
        this.server = srv;
        resolve();
      });
    });
  }

  /** The guest listens on `port` (replacing an earlier listener). */
  listen(port: number, accept: Accept): void {
    this.ports.set(port, accept);
  }

  /**
   * Whether guest vsock traffic flows (the vCPUs run). `reset`: the guest has just
   * handled the transport reset of a snapshot load, which drops every connection
   * that was pending before it (V3).
   */
  setRunning(running: boolean, reset = false): void {
    this.running = running;
    if (!running) return;
    for (const w of [...this.waiters]) w(reset);
  }

  close(): void {
    this.server?.close();
    for (const w of this.waiters) this.waiters.delete(w);
  }

  private onConnection(c: net.Socket): void {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        if (buf.length > 64) c.destroy();
        return;
      }
      c.off('data', onData);
      c.pause();
      const line = buf.subarray(0, nl).toString('latin1');
      const m = /^CONNECT (\d+)$/.exec(line);
      this.log({ vsock: line, running: this.running });
      if (!m) return void c.destroy();
      this.forward(c, Number(m[1]), buf.subarray(nl + 1));
    };
    c.on('data', onData);
    c.on('error', () => {});
  }

  private forward(c: net.Socket, port: number, rest: Buffer): void {
    const go = (): void => {
      const accept = this.ports.get(port);
      if (!accept) {
        this.log({ vsock_refused: port, why: 'no guest listener' }); // V1
        return void c.destroy();
      }
      c.write(`OK ${this.nextHostPort++}\n`);
      if (rest.length > 0) c.unshift(rest);
      accept(c);
    };
    if (this.running) return go();
    const timer = setTimeout(() => {
      this.waiters.delete(w);
      this.log({ vsock_refused: port, why: 'guest not running' }); // V2, V3
      c.destroy();
    }, HOLD_MS);
    const w = (reset: boolean): void => {
      clearTimeout(timer);
      this.waiters.delete(w);
      if (reset) this.log({ vsock_refused: port, why: 'connected before the transport reset' }); // V3
      if (reset) c.destroy();
      else if (!c.destroyed) go();
    };
    this.waiters.add(w);
    c.once('close', () => {
      clearTimeout(timer);
      this.waiters.delete(w);
    });
  }
}
