// Process plumbing of the Firecracker driver: kill and wait, wait for the API socket.
import type { ChildProcess } from 'node:child_process';
import { ThawError } from '../errors.ts';
import type { FirecrackerApi } from './firecracker-api.ts';

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
