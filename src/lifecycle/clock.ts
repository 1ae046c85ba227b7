// The guest's realtime clock. A restored VM resumes with the clock of its
// bake, so every wake sets it, NTP-style, in microseconds:
// 1. `set_clock` to the host's time t1 when it was sent: the guest is then
//    behind by the delivery delay d1;
// 2. its answer carries the guest's clock g2; received at t3, the round trip
//    minus the guest's own processing is t3 - g2 = d1 + d2, so the guest is
//    stepped forward by (t3 - g2) / 2 (`adjust_clock`).
// `syncClock` then probes with `ping` (whose hello carries the guest's clock):
// offset = guest - midpoint of [send, receive]; corrected when over 1 ms,
// slewed while the app runs (a periodic re-sync), stepped right after a wake.
import type { AgentClient } from '../guest/channel.ts';

let anchorUs = 0;
let anchoredAt = -Infinity;

/**
 * The host's realtime clock in microseconds: Date.now() has millisecond
 * resolution, so it is anchored to performance.now() at a millisecond tick
 * (re-anchored every 10 s, so clock adjustments on the host are followed).
 */
export function realtimeUs(): number {
  const p = performance.now();
  if (p - anchoredAt > 10_000) {
    const d0 = Date.now();
    const q0 = performance.now();
    let d = d0;
    let q = q0;
    while (d === d0 && q - q0 < 2) {
      d = Date.now();
      q = performance.now();
    }
    anchorUs = d * 1000 - q * 1000;
    anchoredAt = q;
  }
  return Math.round(anchorUs + performance.now() * 1000);
}

/** Step the guest clock to the host's, corrected for the delivery delay. Resolves to the correction applied (µs). */
export async function setClock(agent: AgentClient, timeoutMs: number): Promise<number> {
  const t1 = realtimeUs();
  const { guest_us } = await agent.request({ op: 'set_clock', epoch_us: t1 }, timeoutMs);
  const t3 = realtimeUs();
  const delta = Math.max(0, Math.round((t3 - guest_us) / 2));
  if (delta > 0) await agent.request({ op: 'adjust_clock', delta_us: delta, slew: false }, timeoutMs);
  return delta;
}

/** Offset of the guest clock from the host's (µs, positive = guest ahead), measured with one ping. */
export async function clockOffset(agent: AgentClient, timeoutMs: number): Promise<{ offsetUs: number; rttUs: number }> {
  const t1 = realtimeUs();
  const h = await agent.request({ op: 'ping' }, timeoutMs);
  const t3 = realtimeUs();
  return { offsetUs: h.clock_us - (t1 + t3) / 2, rttUs: t3 - t1 };
}

/**
 * Measure and correct the guest clock: up to `rounds` probes, each followed by
 * a correction when the offset is over 1 ms. `slew` adjusts gradually (for a
 * running app); otherwise a guest that is behind is stepped forward, and one
 * that is ahead is slewed back, so an app never sees its clock step
 * backwards. Resolves to the last offset.
 */
export async function syncClock(agent: AgentClient, opts: { slew: boolean; rounds?: number; timeoutMs?: number }): Promise<number> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  let offset = 0;
  for (let i = 0; i < (opts.rounds ?? 2); i++) {
    ({ offsetUs: offset } = await clockOffset(agent, timeoutMs));
    if (Math.abs(offset) <= 1000) break;
    await agent.request({ op: 'adjust_clock', delta_us: -Math.round(offset), slew: opts.slew || offset > 0 }, timeoutMs);
  }
  return offset;
}
