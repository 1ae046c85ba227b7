// The agent's end of the host channel: a virtio-serial port (/dev/vportNpM named
// "thaw.agent"). Reads return 0 while the host end is not connected (e.g. right
// after a restore, before the new QEMU's socket is connected); the agent then
// announces itself with a hello, whose write blocks until the host connects.
import { openSync, readdirSync, readFileSync, read, write } from 'node:fs';
import { AGENT_PORT_NAME } from '../../wire/agent.ts';

export function findPortDevice(): string | null {
  let entries: string[] = [];
  try {
    entries = readdirSync('/sys/class/virtio-ports');
  } catch {
    return null;
  }
  for (const e of entries) {
    try {
      if (readFileSync(`/sys/class/virtio-ports/${e}/name`, 'utf8').trim() === AGENT_PORT_NAME) return `/dev/${e}`;
    } catch {
      /* racing with device setup */
    }
  }
  return null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Port {
  private fd = -1;
  private writing: Promise<void> = Promise.resolve();
  onLine: (line: string) => void = () => {};
  onHostGone: () => void = () => {};

  async open(): Promise<void> {
    for (;;) {
      const dev = findPortDevice();
      if (dev) {
        try {
          this.fd = openSync(dev, 'r+');
          return;
        } catch {
          /* retry */
        }
      }
      await sleep(20);
    }
  }

  /** Read forever, splitting lines. */
  async readLoop(): Promise<never> {
    const buf = Buffer.alloc(65536);
    let pending = '';
    let connected = true;
    for (;;) {
      const n = await new Promise<number>((resolve) => read(this.fd, buf, 0, buf.length, null, (err, bytes) => resolve(err ? -1 : bytes)));
      if (n <= 0) {
        if (connected) {
          connected = false;
          pending = '';
          this.onHostGone();
        }
        await sleep(n < 0 ? 50 : 5);
        continue;
      }
      connected = true;
      pending += buf.toString('utf8', 0, n);
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.trim()) this.onLine(line);
      }
    }
  }

  /** Writes are serialized; each blocks (in the thread pool) while the host is away. */
  send(msg: unknown): Promise<void> {
    const data = Buffer.from(`${JSON.stringify(msg)}\n`);
    this.writing = this.writing.then(
      () =>
        new Promise<void>((resolve) => {
          const step = (off: number) =>
            write(this.fd, data, off, data.length - off, null, (err, n) => {
              if (err) return setTimeout(() => step(off), 20);
              if (off + n < data.length) return step(off + n);
              resolve();
            });
          step(0);
        }),
    );
    return this.writing;
  }
}
