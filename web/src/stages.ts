// A wake record as a waterfall: where its milliseconds went, in the order the
// node spent them (src/node/agent.ts, src/lifecycle/wake.ts, thaw.ts,
// boot.ts). After a restore, agent, gate and app start run in parallel from
// the resume; the first response (recorded by the router) ends the wake.
import type { Wake } from './types.ts';

export interface Segment {
  key: string;
  label: string;
  start: number;
  ms: number;
  /** Runs alongside others (drawn on its own lane under them). */
  parallel?: boolean;
}

const SEQ_BEFORE: [string, string][] = [
  ['image_fetch', 'image fetch'],
  ['seed_pull', 'seed pull'],
  ['seed_check_ms', 'seed check'],
  ['prepare_ms', 'prepare'],
];

export function segments(w: Wake): Segment[] {
  const s = w.stages;
  const out: Segment[] = [];
  let t = 0;
  const seq = (key: string, label: string) => {
    const v = s[key];
    if (v === undefined || v <= 0) return;
    out.push({ key, label, start: t, ms: v });
    t += v;
  };
  for (const [k, l] of SEQ_BEFORE) seq(k, l);
  if (w.boot_mode === 'snapshot') {
    seq('restore_ms', 'restore');
    const p = t;
    for (const [k, l] of [['agent_ms', 'agent'], ['gate_ms', 'gate'], ['app_start_ms', 'app start']] as const) {
      const v = s[k];
      if (v !== undefined && v > 0) out.push({ key: k, label: l, start: p, ms: v, parallel: true });
    }
    t = p + Math.max(s.parallel_ms ?? 0, s.app_start_ms ?? 0, s.gate_ms ?? 0, s.agent_ms ?? 0);
  } else {
    // A fallback spent time in the failed thaw before these stages began.
    const coldKnown = (s.vmm_start_ms ?? 0) + (s.boot_ms ?? 0) + (s.app_start_ms ?? 0);
    const gap = w.wall_ms - t - coldKnown;
    if (w.fallback_reason && gap > 1) {
      out.push({ key: 'failed_thaw', label: 'failed thaw', start: t, ms: gap });
      t += gap;
    }
    seq('vmm_start_ms', 'VMM start');
    seq('boot_ms', 'boot + agent');
    seq('app_start_ms', 'app start');
  }
  const end = Math.max(t, w.wall_ms);
  if (w.wall_ms - t > 1 && w.boot_mode === 'snapshot') out.push({ key: 'other', label: 'other', start: t, ms: w.wall_ms - t });
  if (w.first_byte_ms != null && w.first_byte_ms > end) out.push({ key: 'first_response', label: 'first response', start: end, ms: w.first_byte_ms - end });
  return out;
}

/** The wake's full length on the waterfall's scale. */
export const extent = (w: Wake): number => Math.max(w.wall_ms, w.first_byte_ms ?? 0, ...segments(w).map((x) => x.start + x.ms));

const REASONS: Record<string, string> = {
  SEED_MISSING: "The seed's files were missing on the node",
  SEED_CORRUPT: 'The seed failed its integrity check (a file changed since the bake)',
  SEED_MISMATCH: 'The seed was made for another deploy, kernel or Thaw version',
  GATE_FAILED: 'The liveness gate found that the disk does not match the memory image',
  AGENT_TIMEOUT: 'The restored guest agent did not answer in time',
  AGENT_PROTOCOL: 'The restored guest agent spoke another protocol version',
  AGENT_ERROR: 'The restored guest agent reported a failure',
  VM_START_FAILED: 'QEMU could not restore the seed',
  VM_TIMEOUT: 'The restored VM did not become ready in time',
  VM_GONE: 'The restored VM exited unexpectedly',
  QMP_ERROR: 'QEMU refused a command during the restore',
  S3_ERROR: 'The seed could not be fetched from object storage',
};

/** A fallback reason in words ("GATE_FAILED: ..." -> a sentence), or null for none. */
export function reasonInWords(reason: string | null): string | null {
  if (!reason) return null;
  let r = reason;
  let prefix = '';
  if (r.startsWith('seed-unavailable: ')) {
    r = r.slice('seed-unavailable: '.length);
    prefix = 'No seed was available on this node';
  }
  const code = /^([A-Z][A-Z0-9_]+):/.exec(r)?.[1];
  const words = code ? REASONS[code] : undefined;
  const main = words ?? (prefix ? '' : 'The thaw failed');
  const sentence = [prefix, main].filter(Boolean).join(': ');
  return `${sentence}, so Thaw booted the app cold instead.`;
}
