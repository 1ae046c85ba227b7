// Host end of the guest agent protocol (src/wire/agent.ts): NDJSON over the
// Duplex the hypervisor driver opens. Every incoming message is schema-checked;
// every request is raced against its timeout and against the VM's exit.
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { ThawError, type ErrorCode, ERROR_CODES } from '../errors.ts';
import { GuestMessage, Results, type Hello, type Op, type Request, type ResultOf } from '../wire/agent.ts';

type Pending = { op: Op; resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };

export interface AppExitEvent {
  pid: number;
  code: number | null;
  signal: string | null;
  log_tail: string;
}

export class AgentClient extends EventEmitter<{ hello: [Hello]; app_exit: [AppExitEvent]; close: [] }> {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private buf = '';
  private gone: ThawError | null = null;
  lastHello: Hello | null = null;

  constructor(private readonly stream: Duplex, vmExited?: Promise<unknown>) {
    super();
    stream.setEncoding('utf8');
    stream.on('data', (d: string) => this.onData(d));
    stream.on('error', () => {});
    stream.on('close', () => this.fail(new ThawError('VM_GONE', 'agent channel closed')));
    void vmExited?.then(() => this.fail(new ThawError('VM_GONE', 'the VM exited')));
  }

  private fail(err: ThawError): void {
    if (this.gone) return;
    this.gone = err;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ThawError(err.code, `${err.message} (during ${p.op})`));
      this.pending.delete(id);
    }
    this.emit('close');
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (line.trim()) this.onLine(line);
    }
  }

  private onLine(line: string): void {
    let parsed;
    try {
      parsed = GuestMessage.safeParse(JSON.parse(line));
    } catch {
      return; // noise on the line (e.g. partial write after a restore)
    }
    if (!parsed.success) return;
    const msg = parsed.data;
    if (msg.type === 'hello') {
      this.lastHello = msg.hello;
      this.emit('hello', msg.hello);
    } else if (msg.type === 'app_exit') {
      this.emit('app_exit', msg);
    } else {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) {
        const r = Results[p.op].safeParse(msg.data);
        if (r.success) p.resolve(r.data);
        else p.reject(new ThawError('AGENT_PROTOCOL', `agent result for ${p.op} does not match the schema: ${r.error.message.slice(0, 300)}`));
      } else {
        const code = (msg.error.code in ERROR_CODES ? msg.error.code : 'AGENT_ERROR') as ErrorCode;
        p.reject(new ThawError(code, `guest agent (${p.op}): ${msg.error.message}`));
      }
    }
  }

  request<O extends Op>(req: Extract<Request, { op: O }>, timeoutMs: number): Promise<ResultOf<O>> {
    if (this.gone) return Promise.reject(this.gone);
    const id = this.nextId++;
    return new Promise<ResultOf<O>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ThawError('AGENT_TIMEOUT', `guest agent did not answer ${req.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { op: req.op, resolve: resolve as (v: unknown) => void, reject, timer });
      this.stream.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  }

  /**
   * Wait until the agent is there: a hello, or (with `ping`) an answer to a
   * ping, whichever comes first. Ping only when the guest has its port open
   * (after a restore): bytes sent to a port the guest has not opened yet stall
   * QEMU's chardev and with it the boot. With `notPid`, wait for an agent
   * process other than that one (after a respawn).
   */
  async ready(timeoutMs: number, opts: { ping?: boolean; notPid?: number } = {}): Promise<Hello> {
    const { ping: doPing = false, notPid } = opts;
    const deadline = Date.now() + timeoutMs;
    return new Promise<Hello>((resolve, reject) => {
      let done = false;
      const finish = (err: Error | null, h?: Hello) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.off('hello', onHello);
        this.off('close', onClose);
        if (err) reject(err);
        else resolve(h!);
      };
      const onHello = (h: Hello) => {
        this.lastHello = h;
        if (notPid === undefined || h.agent_pid !== notPid) finish(null, h);
      };
      const onClose = () => finish(this.gone ?? new ThawError('VM_GONE', 'agent channel closed'));
      const ping = () => {
        this.request({ op: 'ping' }, Math.max(1, deadline - Date.now())).then(onHello, () => {});
      };
      const timer = setTimeout(() => finish(new ThawError('AGENT_TIMEOUT', `guest agent did not say hello within ${timeoutMs} ms`)), timeoutMs);
      this.on('hello', onHello);
      this.on('close', onClose);
      if (this.gone) onClose();
      if (doPing) ping();
    });
  }

  close(): void {
    this.stream.destroy();
  }
}
