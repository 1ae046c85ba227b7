// Minimal QMP client: JSON lines over a unix socket. QEMU answers commands in
// order, so a FIFO of pending commands is enough; events are emitted.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { ThawError } from '../errors.ts';

type Pending = { cmd: string; resolve: (v: unknown) => void; reject: (e: Error) => void };

export class Qmp extends EventEmitter {
  private readonly pending: Pending[] = [];
  private buf = '';
  private closed = false;

  private constructor(private readonly sock: net.Socket) {
    super();
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => {
      this.closed = true;
      for (const p of this.pending.splice(0)) p.reject(new ThawError('VM_GONE', `QMP connection closed during ${p.cmd}`));
      this.emit('close');
    });
    sock.on('error', () => {});
  }

  /** Connect, read the greeting and negotiate capabilities. Retries while the socket does not exist yet. */
  static async connect(socketPath: string, signal: AbortSignal): Promise<Qmp> {
    for (;;) {
      signal.throwIfAborted();
      const sock = await new Promise<net.Socket | null>((resolve) => {
        const s = net.connect(socketPath, () => resolve(s));
        s.once('error', () => resolve(null));
      });
      if (sock) {
        const qmp = new Qmp(sock);
        await qmp.greeting;
        await qmp.execute('qmp_capabilities');
        return qmp;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  private greetingResolve!: () => void;
  readonly greeting = new Promise<void>((r) => (this.greetingResolve = r));

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) this.greetingResolve();
      else if ('event' in msg) this.emit('event', msg);
      else if ('return' in msg || 'error' in msg) {
        const p = this.pending.shift();
        if (!p) continue;
        if ('error' in msg) {
          const e = msg.error as { class?: string; desc?: string };
          p.reject(new ThawError('QMP_ERROR', `QMP ${p.cmd}: ${e.desc ?? 'error'}`, { details: { class: e.class } }));
        } else p.resolve(msg.return);
      }
    }
  }

  execute<T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new ThawError('VM_GONE', `QMP is closed; cannot run ${cmd}`));
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ cmd, resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(`${JSON.stringify(args ? { execute: cmd, arguments: args } : { execute: cmd })}\n`);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}
