// Process plumbing of the Firecracker driver: kill and wait, wait for the API
// socket, connect to the guest agent over vsock.
import type { ChildProcess } from 'node:child_process';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { ThawError, isThawError } from '../errors.ts';
import { vsockHandshake, type FirecrackerApi } from './firecracker-api.ts';

export const AGENT_VSOCK_PORT = 1024;
/** Pause between vsock handshake attempts while the guest is not listening yet. */
const CONNECT_RETRY_MS = 50;
/** One attempt's limit: a CONNECT the guest never answers is dropped by Firecracker after about 2 s. */
const CONNECT_ATTEMPT_MS = 3_000;

export type Exit = { code: number | null; signal: NodeJS.Signals | null };

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function killAndWait(child: ChildProcess, exited: Promise<Exit>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 5_000)))]);
  clearTimeout(timer);
}

/** Poll `GET /` until it answers, racing the process exit (VM_START_FAILED) and a timeout (VM_TIMEOUT). */
export async function waitForApi(vm: { api: FirecrackerApi; exited: Promise<Exit>; consoleLog: string; apiSocket: string }, timeoutMs: number): Promise<void> {
  const details = { consoleLog: vm.consoleLog, apiSocket: vm.apiSocket };
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs)));
  const exited = vm.exited.then(() => 'exited' as const);
  try {
    for (;;) {
      const probe = vm.api.describe().then(() => 'up' as const, () => 'retry' as const);
      let outcome = await Promise.race([probe, exited, timedOut]);
      if (outcome === 'up') return;
      if (outcome === 'retry') outcome = await Promise.race([sleep(20).then(() => 'retry' as const), exited, timedOut]);
      if (outcome === 'retry') continue;
      if (outcome === 'exited') {
        const e = await vm.exited;
        throw new ThawError('VM_START_FAILED', `Firecracker exited before its API answered (code ${e.code}, signal ${e.signal}); see ${vm.consoleLog}`, { details: { ...details, ...e } });
      }
      throw new ThawError('VM_TIMEOUT', `Firecracker API did not answer within ${timeoutMs} ms; see ${vm.consoleLog}`, { details });
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Retry the vsock handshake on `vsockSocket` until the guest's agent listens: AGENT_TIMEOUT after
 * `timeoutMs`, VM_GONE once `exited()` reports the process gone, AGENT_PROTOCOL on a bad answer.
 */
export async function connectAgent(vsockSocket: string, vmId: string, timeoutMs: number, exited: () => Record<string, unknown> | null): Promise<Duplex> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt++) {
    const sock = net.createConnection(vsockSocket);
    try {
      await vsockHandshake(sock, AGENT_VSOCK_PORT, Math.max(1, Math.min(CONNECT_ATTEMPT_MS, deadline - Date.now())));
      return sock;
    } catch (err) {
      sock.destroy();
      const gone = exited();
      if (gone) throw new ThawError('VM_GONE', `Firecracker VM ${vmId} exited`, { cause: err, details: gone });
      if (isThawError(err, 'AGENT_PROTOCOL')) throw err;
      if (Date.now() + CONNECT_RETRY_MS >= deadline) {
        throw new ThawError('AGENT_TIMEOUT', `no agent on vsock port ${AGENT_VSOCK_PORT} of VM ${vmId} after ${attempt} attempts in ${timeoutMs} ms: ${(err as Error).message}`, { cause: err });
      }
    }
    await sleep(CONNECT_RETRY_MS);
  }
}
