// The dashboard's waterfall (web/src/stages.ts): stages in the order a node
// spends them, the parallel ones after a restore, the router's first byte
// last, a failed thaw before a cold fallback, fallback reasons in words.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { extent, reasonInWords, segments } from '../../web/src/stages.ts';
import type { Wake } from '../../web/src/types.ts';

function wake(over: Partial<Wake>): Wake {
  return {
    id: 'w', app: 'a', at: '2026-01-01T00:00:00.000Z', wall_ms: 1000, boot_mode: 'snapshot', boot_ms: 0, gate_ms: null, app_start_ms: 0,
    fs_errors: 0, fallback_reason: null, node: 'local', seed_source: 'local', stages: {}, ...over,
  };
}

test('a snapshot wake: fetches, check, prepare, restore in sequence; agent, gate, app start side by side; then the first response', () => {
  const w = wake({
    wall_ms: 1000,
    first_byte_ms: 1100,
    stages: { seed_pull: 300, seed_check_ms: 10, prepare_ms: 20, restore_ms: 100, agent_ms: 50, gate_ms: 200, app_start_ms: 500, parallel_ms: 520, seed_check_full: 1 },
  });
  const s = segments(w);
  assert.deepEqual(s.map((x) => [x.key, x.start, x.ms, !!x.parallel]), [
    ['seed_pull', 0, 300, false],
    ['seed_check_ms', 300, 10, false],
    ['prepare_ms', 310, 20, false],
    ['restore_ms', 330, 100, false],
    ['agent_ms', 430, 50, true],
    ['gate_ms', 430, 200, true],
    ['app_start_ms', 430, 500, true],
    ['other', 950, 50, false],
    ['first_response', 1000, 100, false],
  ]);
  assert.equal(extent(w), 1100);
});

test('a cold fallback shows the failed thaw before the cold stages; no first byte without a waiting request', () => {
  const w = wake({ boot_mode: 'cold', wall_ms: 9000, fallback_reason: 'GATE_FAILED: liveness gate failed: canary mismatch', stages: { prepare_ms: 100, vmm_start_ms: 400, boot_ms: 5000, app_start_ms: 2500 } });
  assert.deepEqual(segments(w).map((x) => [x.key, x.start, x.ms]), [
    ['prepare_ms', 0, 100],
    ['failed_thaw', 100, 1000],
    ['vmm_start_ms', 1100, 400],
    ['boot_ms', 1500, 5000],
    ['app_start_ms', 6500, 2500],
  ]);
  assert.equal(extent(w), 9000);
});

test('fallback reasons in words', () => {
  assert.equal(reasonInWords(null), null);
  assert.match(reasonInWords('GATE_FAILED: liveness gate failed: x')!, /^The liveness gate found that the disk does not match the memory image, so Thaw booted the app cold instead\.$/);
  assert.match(reasonInWords('seed-unavailable: seed s1 is not on node n2 and has no replicated copy')!, /^No seed was available on this node, so Thaw/);
  assert.match(reasonInWords('seed-unavailable: S3_ERROR: timeout')!, /^No seed was available on this node: The seed could not be fetched from object storage/);
  assert.match(reasonInWords('SOMETHING_NEW: ???')!, /^The thaw failed, so Thaw booted the app cold instead\.$/);
});
