// The fake's guest: a stand-in for the kernel + static agent that speaks the
// agent protocol (src/wire/agent.ts) on vsock port 1024, as guest/agent/loop.c
// does (it listens once booted; the latest connection is the channel and gets
// a hello). Its whole state is its "memory": /snapshot/create writes it to the
// memory file, /snapshot/load reads it back, so a thaw meets the agent (pid,
// key) that was frozen, and a corrupt memory file is a failed load. `scrub`
// writes the canary at the start of the root drive and `gate` reads it back,
// so memory restored over another disk fails the gate, as in a real guest.
import { createHash, randomUUID } from 'node:crypto';
import { open } from 'node:fs/promises';
import type net from 'node:net';
import { generateAgentKey } from '../../wire/seal.ts';
import { AGENT_VSOCK_PORT, PROTOCOL_VERSION } from '../../wire/agent.ts';
import type { FakeVsock } from './vsock.ts';

export interface GuestMemory {
  magic: 'fake-guest-memory';
  booted: boolean;
  agent_pid: number;
  boot_id: string;
  pubkey: string;
  app_pid: number | null;
  boot_ms: number;
}

type Req = { id: number; op: string; [k: string]: unknown };

export class FakeGuest {
  memory: GuestMemory;
  private chan: net.Socket | null = null;
  private readonly born = Date.now();

  constructor(private readonly vsock: FakeVsock, private readonly disk: () => string | null, bootMs: number) {
    this.memory = { magic: 'fake-guest-memory', booted: false, agent_pid: 0, boot_id: randomUUID(), pubkey: '', app_pid: null, boot_ms: bootMs };
  }

  /** InstanceStart: the kernel boots; the agent listens once it is up. */
  start(): void {
    setTimeout(() => {
      this.memory = { ...this.memory, booted: true, agent_pid: 100 + Math.floor(Math.random() * 1000), pubkey: generateAgentKey().publicB64 };
      this.vsock.listen(AGENT_VSOCK_PORT, (c) => this.serve(c));
    }, this.memory.boot_ms).unref();
  }

  /** Snapshot load: the memory image is the guest (its listener included). */
  restore(memory: GuestMemory): void {
    this.memory = memory;
    if (memory.booted) this.vsock.listen(AGENT_VSOCK_PORT, (c) => this.serve(c));
  }

  private hello(): object {
    const m = this.memory;
    return { version: PROTOCOL_VERSION, agent_pid: m.agent_pid, boot_id: m.boot_id, pubkey: m.pubkey, app_pid: m.app_pid, uptime_ms: Date.now() - this.born, clock_us: Date.now() * 1000 };
  }

  private send(o: object): void {
    this.chan?.write(`${JSON.stringify(o)}\n`);
  }

  private serve(c: net.Socket): void {
    this.chan?.destroy();
    this.chan = c;
    let buf = '';
    c.setEncoding('utf8');
    c.on('error', () => {});
    c.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        void this.answer(JSON.parse(line) as Req).catch(() => {});
      }
    });
    c.resume();
    this.send({ type: 'hello', hello: this.hello() });
  }

  private async answer(r: Req): Promise<void> {
    const ok = (data: unknown) => this.send({ type: 'result', id: r.id, ok: true, data });
    const m = this.memory;
    switch (r.op) {
      case 'ping': return ok(this.hello());
      case 'set_clock': return ok({ guest_us: Date.now() * 1000 });
      case 'adjust_clock': return ok({ guest_us: Date.now() * 1000, stepped: false });
      case 'reseed': return ok({ ok: true });
      case 'start_app': m.app_pid = 2000 + Math.floor(Math.random() * 1000); return ok({ pid: m.app_pid, listen_ms: 1 });
      case 'stop_app': { const pid = m.app_pid; m.app_pid = null; return ok({ pid, code: 0, signal: null }); }
      case 'scrub': await this.writeDisk(Buffer.from(String(r.canary_b64), 'base64')); return ok({ canary_path: '/var/lib/thaw/canary', ms: 1 });
      case 'respawn':
        ok({ ok: true });
        this.memory = { ...m, agent_pid: m.agent_pid + 1, pubkey: generateAgentKey().publicB64 };
        // The new agent says hello once it has started, a moment after the answer.
        return void setTimeout(() => this.send({ type: 'hello', hello: this.hello() }), 50);
      case 'gate': {
        const head = await this.readDisk(4096);
        const canaryOk = createHash('sha256').update(head).digest('hex') === r.canary_sha256;
        return ok({ ok: canaryOk, canary_ok: canaryOk, roundtrip_ok: true, fs_errors: [], ms: 1, reason: canaryOk ? null : 'canary mismatch' });
      }
      default:
        return this.send({ type: 'result', id: r.id, ok: false, error: { code: 'AGENT_ERROR', message: `op ${r.op} is not in the fake guest` } });
    }
  }

  private async writeDisk(data: Buffer): Promise<void> {
    const f = await open(this.disk() ?? '', 'r+');
    await f.write(data, 0, data.length, 0).finally(() => f.close());
  }

  private async readDisk(n: number): Promise<Buffer> {
    const f = await open(this.disk() ?? '', 'r');
    const b = Buffer.alloc(n);
    await f.read(b, 0, n, 0).finally(() => f.close());
    return b;
  }
}
