// CPU time of a VMM process, the host's measure of whether a guest makes
// progress: under load a guest gets less CPU per second but still gets some
// (slow), while a hung or idle one gets next to none (dead). Used for the
// progress deadlines of VMM start-up (qemu.ts) and of agent calls
// (src/lifecycle/deadline.ts, src/guest/channel.ts).
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

/** User + system CPU time of a process in ms (all its threads), or null when it is gone or unknown. */
export function processCpuMs(pid: number): number | null {
  if (!(pid > 0)) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(f[11]);
    const stime = Number(f[12]);
    if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
    return ((utime + stime) * 1000) / USER_HZ;
  } catch {
    return null;
  }
}

/**
 * Time (ms) the process's threads have run on a CPU *or waited for one* in
 * the run queue (/proc/PID/task/TID/schedstat), or null when unknown. A guest
 * starved by a loaded host still accumulates run-queue wait: it wants to run
 * (slow), where a dead or idle one neither runs nor waits. Falls back to CPU
 * time where schedstat is missing.
 */
export function processProgressMs(pid: number): number | null {
  if (!(pid > 0)) return null;
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ').map(Number);
      if (Number.isFinite(run) && Number.isFinite(wait)) ns += run! + wait!;
    }
    return ns / 1e6;
  } catch {
    return processCpuMs(pid);
  }
}

/**
 * Call `dead` once process `pid` has run or waited to run less than `minCpuMs` in a
 * whole `windowMs` (a process whose CPU time is unknown gets one window).
 * Every window with progress is renewed. Returns a function that stops it.
 */
export function progressTimer(pid: number, windowMs: number, minCpuMs: number, dead: (usedMs: number | null) => void): () => void {
  let last = processProgressMs(pid);
  let timer: NodeJS.Timeout;
  const check = () => {
    const now = processProgressMs(pid);
    const used = last !== null && now !== null ? now - last : null;
    if (used !== null && used >= minCpuMs) {
      last = now;
      timer = setTimeout(check, windowMs);
      return;
    }
    dead(used);
  };
  timer = setTimeout(check, windowMs);
  return () => clearTimeout(timer);
}
