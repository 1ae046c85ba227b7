// Time-boxed fuzzing of the guest agent's message parser (guest/agent/fuzz.c,
// run by guest/agent/fuzz.sh under libFuzzer, ASan and UBSan) over the seed
// corpus in guest/agent/corpus. THAW_FUZZ_SECONDS changes the time box (30 s in the suite, which must stay well
// under 30 min on 2 cores; give it hours before a release).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AGENT_SRC } from './agent-build.ts';

const SECONDS = Number(process.env.THAW_FUZZ_SECONDS ?? 30);
const INSTALL = 'apt-get install clang libclang-rt-14-dev';

test('the agent survives fuzzing of its message parser', { timeout: Math.max(5 * 60_000, SECONDS * 1000 + 120_000) }, async (t) => {
  assert.ok(Number.isInteger(SECONDS) && SECONDS > 0, `THAW_FUZZ_SECONDS must be a positive whole number, not ${process.env.THAW_FUZZ_SECONDS}`);
  const clang = spawnSync('clang', ['--version'], { stdio: 'ignore' });
  if (clang.error || clang.status !== 0) assert.fail(`fuzzing the guest agent needs clang with libFuzzer: ${INSTALL}`);

  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-fuzz-'));
  let pid: number | undefined;
  t.after(async () => {
    if (pid !== undefined) {
      try {
        process.kill(-pid, 'SIGKILL'); // fuzz.sh and the fuzzer, if the test ended early
      } catch {
        // already gone
      }
    }
    await rm(work, { recursive: true, force: true });
  });

  const child = spawn('bash', [path.join(AGENT_SRC, 'fuzz.sh'), String(SECONDS), work], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  pid = child.pid;
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (output += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (output += s));
  const code = await new Promise<number | string>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c, signal) => resolve(c ?? String(signal)));
  });
  pid = undefined;

  const tail = output.split('\n').slice(-80).join('\n');
  if (/libclang_rt\.(fuzzer|asan|ubsan)|clang: (command )?not found/.test(output)) {
    assert.fail(`building the fuzzer needs clang's sanitizer runtimes: ${INSTALL}\n${tail}`);
  }
  assert.equal(code, 0, `fuzz.sh failed (exit ${code}): a crash, leak, UB or timeout in the agent; the input is in the output below\n${tail}`);
  const done = /Done (\d+) runs in (\d+) second/.exec(output);
  assert.ok(done, `libFuzzer did not report a finished run\n${tail}`);
  const speed = /stat::average_exec_per_sec:\s+(\d+)/.exec(output)?.[1];
  const cov = /#\d+\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/.exec(output);
  t.diagnostic(`${done[1]} runs in ${done[2]} s (${speed ?? '?'} exec/s)${cov ? `, cov ${cov[1]}, corpus ${cov[3]}` : ''}`);
});
