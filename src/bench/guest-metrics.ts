// What the lifecycle benchmark measures inside and around the guest: the
// agent's resident memory, how far the guest clock is from the host's as an
// app request sees it, the compressed size of a seed, and percentiles.
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { httpRequest } from '../doctor.ts';
import type { RunningVm } from '../lifecycle/context.ts';
import { realtimeUs } from '../lifecycle/clock.ts';
import { packSeed } from '../seed/pack.ts';

/** Resident memory of the guest agent process, KiB (from its own `ps`). */
export async function agentRssKib(run: RunningVm): Promise<number | null> {
  const pid = run.agent.lastHello?.agent_pid;
  const { processes } = await run.agent.request({ op: 'ps' }, 5000);
  return processes.find((p) => p.pid === pid)?.rss_kib ?? null;
}

/**
 * How far the guest's clock (the app's `now_ms`) falls outside the host's
 * [send, receive] interval of one request to the app, in ms (0 when inside).
 */
export async function clockOutsideMs(port: number, host = '127.0.0.1'): Promise<number | null> {
  const t0 = realtimeUs() / 1000;
  const res = await httpRequest(port, { host });
  const t1 = realtimeUs() / 1000;
  const now = (JSON.parse(res.body) as { now_ms?: unknown }).now_ms;
  if (typeof now !== 'number') return null;
  return Math.round(Math.max(0, t0 - now, now - t1) * 10) / 10;
}

/** Bytes of the seed packed as object storage holds it (sparse tar + zstd). */
export async function compressedBytes(seedDir: string): Promise<number> {
  const { stream, done } = packSeed(seedDir);
  await pipeline(stream, new Writable({ write: (_c, _e, cb) => cb() }));
  return (await done).bytesOut;
}
