// Deadlines of a wake that do not punish contention. Two kinds:
// - per call, a *progress window* (src/guest/channel.ts): a call fails only
//   when the guest showed no progress for a whole window: no message from the
//   agent and less CPU time for the VM's process than an idle guest uses. Under
//   load a guest gets less CPU per second but still gets some, so it is slow,
//   not dead, and is waited for;
// - per wake, one overall deadline (an AbortSignal whose reason is
//   WAKE_DEADLINE): the VM is deleted and the seed kept.
import { ThawError } from '../errors.ts';
import { processCpuMs, processProgressMs } from '../hypervisor/cpu.ts';
import type { Progress } from '../guest/channel.ts';

/**
 * Share of one core (run + run-queue wait) that counts as progress in a
 * window. Idle thawed guests measured 0.7 to 4.7% on a 2-core host at load
 * average 10 (the burst VM test logs it); a guest working on a request runs
 * or waits to run nearly all the time, however loaded the host. 10% leaves a
 * 2x margin above idle.
 */
export const PROGRESS_CPU_SHARE = 0.1;

export { processCpuMs };

/** Progress of a VM: time its VMM process ran or waited in the run queue (a starved guest is slow, not dead). */
export function vmProgress(pid: number, share = PROGRESS_CPU_SHARE): Progress {
  return { cpuMs: () => processProgressMs(pid), minCpuMsPerWindow: (windowMs) => windowMs * share };
}

/** Default overall wake deadline (ms), from admission to a listening app. */
export const WAKE_DEADLINE_MS = 180_000;

/** An AbortSignal that aborts after `ms` with a WAKE_DEADLINE error; `clear()` when the wake is done. */
export function wakeDeadline(ms: number, app: string): { signal: AbortSignal; clear(): void } {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(new ThawError('WAKE_DEADLINE', `the wake of ${app} ran past its overall deadline of ${ms} ms`, { details: { app, deadline_ms: ms } })), ms);
  t.unref();
  return { signal: ac.signal, clear: () => clearTimeout(t) };
}

/** Throw the signal's reason when it has aborted (between lifecycle steps). */
export function checkDeadline(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason instanceof ThawError ? signal.reason : new ThawError('WAKE_DEADLINE', 'the wake was aborted');
}
