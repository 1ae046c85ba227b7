// Host end of the guest agent protocol (src/wire/agent.ts): NDJSON over the
// Duplex the hypervisor driver opens. Every incoming message is schema-checked;
// every request is raced against the VM's exit, an overall AbortSignal (the
// wake deadline) and a progress deadline: its timeout is a *window*, renewed
// as long as the guest shows progress in it (bytes from the agent, or CPU time
// of the VM's process), so a guest slowed down by load is waited for and only
// one that did nothing for a whole window is declared dead (AGENT_TIMEOUT).
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { ThawError, type ErrorCode, ERROR_CODES } from '../errors.ts';
import { GuestMessage, Results, type Hello, type Op, type Request, type ResultOf } from '../wire/agent.ts';

type Pending = { op: Op; resolve: (v: unknown) => void; reject: (e: Error) => void; timer: Watch };

/** How the host tells a slow guest from a dead one. */
export interface Progress {
  /** Cumulative CPU time (ms) of the VM's process, or null when unknown. */
  cpuMs(): number | null;
  /** Least CPU time (ms) per window that counts as progress (an idle guest uses less). */
  minCpuMsPerWindow(windowMs: number): number;
}

export interface AgentClientOptions {
  progress?: Progress;
  /** Aborting fails every pending and later request with the signal's reason (a ThawError). */
  signal?: AbortSignal;
}

interface Watch {
  stop(): void;
  /** Windows renewed because the guest showed progress. */
  renewals: number;
}

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
  /** Messages received so far: progress for every pending request. */
  private received = 0;
  /** Progress windows renewed so far (a slow guest that was waited for). */
  renewals = 0;
  lastHello: Hello | null = null;

  constructor(private readonly stream: Duplex, vmExited?: Promise<unknown>, private readonly opts: AgentClientOptions = {}) {
    super();
    stream.setEncoding('utf8');
    stream.on('data', (d: string) => this.onData(d));
    stream.on('error', () => {});
    stream.on('close', () => this.fail(new ThawError('VM_GONE', 'agent channel closed')));
    void vmExited?.then(() => this.fail(new ThawError('VM_GONE', 'the VM exited')));
    const sig = opts.signal;
    if (sig) {
      const abort = () => this.fail(sig.reason instanceof ThawError ? sig.reason : new ThawError('WAKE_DEADLINE', 'the wake was aborted'));
      if (sig.aborted) abort();
      else sig.addEventListener('abort', abort, { once: true });
      this.once('close', () => sig.removeEventListener('abort', abort));
    }
  }

  /**
   * Call `dead` once the guest has shown no progress for a whole `windowMs`:
   * no message from the agent and (when the VM's CPU time is known) less CPU
   * than an idle guest uses. Every window with progress is renewed.
   */
  private watch(windowMs: number, dead: (why: string) => void): Watch {
    const p = this.opts.progress;
    let rx = this.received;
    let cpu = p?.cpuMs() ?? null;
    let timer: NodeJS.Timeout;
    const w: Watch = { renewals: 0, stop: () => clearTimeout(timer) };
    const check = () => {
      const cpuNow = p?.cpuMs() ?? null;
      const used = cpu !== null && cpuNow !== null ? cpuNow - cpu : null;
      if (this.received > rx || (used !== null && used >= p!.minCpuMsPerWindow(windowMs))) {
        rx = this.received;
        cpu = cpuNow;
        w.renewals++;
        this.renewals++;
        timer = setTimeout(check, windowMs);
        return;
      }
      dead(used === null ? `no answer for ${windowMs} ms` : `no answer and ${Math.round(used)} ms of CPU in ${windowMs} ms`);
    };
    timer = setTimeout(check, windowMs);
    return w;
  }

  private fail(err: ThawError): void {
    if (this.gone) return;
    this.gone = err;
    for (const [id, p] of this.pending) {
      p.timer.stop();
      p.reject(new ThawError(err.code, `${err.message} (during ${p.op})`, { details: err.details }));
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
      if (line.trim()) {
        this.received++;
        this.onLine(line);
      }
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
      p.timer.stop();
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

  /**
   * Send one request. `windowMs` is a progress window, not a wall-clock limit:
   * AGENT_TIMEOUT only after a whole window without progress (see watch()).
   */
  request<O extends Op>(req: Extract<Request, { op: O }>, windowMs: number): Promise<ResultOf<O>> {
    if (this.gone) return Promise.reject(this.gone);
    const id = this.nextId++;
    return new Promise<ResultOf<O>>((resolve, reject) => {
      const timer = this.watch(windowMs, (why) => {
        this.pending.delete(id);
        reject(new ThawError('AGENT_TIMEOUT', `guest made no progress on ${req.op}: ${why}`));
      });
      this.pending.set(id, { op: req.op, resolve: resolve as (v: unknown) => void, reject, timer });
      this.stream.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  }

  /**
   * Wait until the agent is there: a hello, or (with `ping`) an answer to a
   * ping, whichever comes first. Ping only when the guest has its port open
   * (after a restore): bytes sent to a port the guest has not opened yet stall
   * QEMU's chardev and with it the boot. With `notPid`, wait for an agent
   * process other than that one (after a respawn). `windowMs` is a progress
   * window like request()'s.
   */
  async ready(windowMs: number, opts: { ping?: boolean; notPid?: number } = {}): Promise<Hello> {
    const { ping: doPing = false, notPid } = opts;
    return new Promise<Hello>((resolve, reject) => {
      let done = false;
      const finish = (err: Error | null, h?: Hello) => {
        if (done) return;
        done = true;
        timer.stop();
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
        this.request({ op: 'ping' }, windowMs).then(onHello, () => {});
      };
      const timer = this.watch(windowMs, (why) => finish(new ThawError('AGENT_TIMEOUT', `guest agent did not say hello: ${why}`)));
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
