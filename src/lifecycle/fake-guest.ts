// Test helpers: a fake hypervisor whose "guest" is a scripted agent speaking
// the real protocol (src/wire/agent.ts) over an in-memory duplex, and whose
// "VMM process" is a real child process (busy or idle) so the CPU-time
// progress probe reads real /proc numbers. Unit tests of deadlines only;
// never proof that a thaw works (test/vm/ boots real VMs).
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { Duplex, PassThrough } from 'node:stream';
import type { Hypervisor, VmHandle, VmSpec } from '../hypervisor/types.ts';
import type { Op } from '../wire/agent.ts';

/** Two connected duplex ends. */
function duplexPair(): [Duplex, Duplex] {
  const ab = new PassThrough();
  const ba = new PassThrough();
  const end = (r: PassThrough, w: PassThrough) =>
    new Duplex({
      read() {},
      write(chunk, enc, cb) {
        w.write(chunk, enc, cb);
      },
      final(cb) {
        w.end();
        cb();
      },
      destroy(err, cb) {
        w.destroy();
        r.destroy();
        cb(err);
      },
    });
  const a = end(ba, ab);
  const b = end(ab, ba);
  ab.on('data', (d) => b.push(d));
  ba.on('data', (d) => a.push(d));
  ab.on('close', () => b.destroy());
  ba.on('close', () => a.destroy());
  return [a, b];
}

/** An X25519 public key, raw 32 bytes base64 (what a real agent announces). */
export function agentPubkey(): string {
  const jwk = generateKeyPairSync('x25519').publicKey.export({ format: 'jwk' }) as { x: string };
  return Buffer.from(jwk.x, 'base64url').toString('base64');
}

export interface GuestScript {
  pubkey: string;
  /** ms before answering each op (in order: the agent serves one request at a time); undefined = at once. */
  delayMs?: Partial<Record<Op, number>>;
  /** Never answer anything (a dead guest). */
  silent?: boolean;
  /** The VMM process: 'busy' burns some CPU (a slow guest), 'idle' none (a dead one). */
  cpu: 'busy' | 'idle';
}

export class FakeHypervisor implements Hypervisor {
  readonly name = 'qemu' as const;
  readonly diskFormat = 'qcow2' as const;
  readonly agentChannelBeforeResume = true;
  readonly procs: ChildProcess[] = [];
  destroyed = 0;
  answered: Op[] = [];

  constructor(private readonly script: GuestScript) {}

  async accel() {
    return 'tcg' as const;
  }

  private start(spec: VmSpec): VmHandle {
    // A stand-in for QEMU: 'busy' runs 100 ms of every 300 ms (a guest that gets a third of a core), 'idle' sleeps (and starts in no time).
    const busy = 'setInterval(()=>{const t=Date.now();while(Date.now()-t<100){}},300)';
    const p = this.script.cpu === 'busy' ? spawn(process.execPath, ['-e', busy], { stdio: 'ignore' }) : spawn('sleep', ['600'], { stdio: 'ignore' });
    this.procs.push(p);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => p.once('exit', (c, s) => r({ code: c, signal: s })));
    return { id: spec.id, spec, pid: p.pid!, consoleLog: `${spec.dir}/console.log`, exited, appAddress: { host: '127.0.0.1', port: spec.hostPort } };
  }

  async boot(spec: VmSpec) {
    return this.start(spec);
  }
  async restore(spec: VmSpec) {
    return this.start(spec);
  }
  async pause() {}
  async resume() {}
  async snapshot() {}

  async openAgentChannel(_vm: VmHandle): Promise<Duplex> {
    const [host, guest] = duplexPair();
    let chain = Promise.resolve();
    let buf = '';
    const s = this.script;
    const hello = () => ({ version: 2, agent_pid: 1, boot_id: 'b', pubkey: s.pubkey, app_pid: null, uptime_ms: 1, clock_us: Date.now() * 1000 });
    const answer = (id: number, op: Op): unknown => {
      switch (op) {
        case 'ping':
          return hello();
        case 'set_clock':
        case 'adjust_clock':
          return op === 'set_clock' ? { guest_us: Date.now() * 1000 } : { guest_us: Date.now() * 1000, stepped: true };
        case 'reseed':
          return { ok: true };
        case 'gate':
          return { ok: true, canary_ok: true, roundtrip_ok: true, fs_errors: [], ms: 1, reason: null };
        case 'start_app':
          return { pid: 4242, listen_ms: 1 };
        default:
          throw new Error(`fake agent: unexpected ${op} (id ${id})`);
      }
    };
    guest.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const req = JSON.parse(buf.slice(0, nl)) as { id: number; op: Op };
        buf = buf.slice(nl + 1);
        if (s.silent) continue;
        chain = chain.then(async () => {
          await new Promise((r) => setTimeout(r, s.delayMs?.[req.op] ?? 0).unref());
          if (guest.destroyed) return;
          this.answered.push(req.op);
          guest.write(`${JSON.stringify({ type: 'result', id: req.id, ok: true, data: answer(req.id, req.op) })}\n`);
        });
      }
    });
    guest.on('error', () => {});
    return host;
  }

  async destroy(vm: VmHandle) {
    this.destroyed++;
    try {
      process.kill(vm.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await vm.exited;
  }

  /** Kill every stand-in process (test cleanup). */
  cleanup(): void {
    for (const p of this.procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
}
