import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { findJailer } from './select.ts';

test('the jailer is used when present (root): THAW_JAILER, else `jailer` on PATH; THAW_JAILER=none turns it off', { skip: process.getuid?.() === 0 ? false : 'root only' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'thaw-jailer-'));
  try {
    const bin = join(dir, 'jailer');
    writeFileSync(bin, '', { mode: 0o755 });
    assert.equal(findJailer({ PATH: dir }), bin);
    assert.equal(findJailer({ PATH: '/nonexistent' }), null);
    assert.equal(findJailer({ PATH: dir, THAW_JAILER: 'none' }), null);
    assert.equal(findJailer({ PATH: '', THAW_JAILER: bin }), bin);
    assert.equal(findJailer({ PATH: dir, THAW_JAILER: join(dir, 'missing') }), null);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
