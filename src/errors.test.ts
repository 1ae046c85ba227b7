import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { renderErrors } from '../scripts/gen-errors.ts';
import { ThawError, asThawError } from './errors.ts';

test('docs/ERRORS.md lists exactly the codes in src/errors.ts', async () => {
  const doc = await readFile(new URL('../docs/ERRORS.md', import.meta.url), 'utf8');
  assert.equal(doc, renderErrors(), 'run: node --import tsx scripts/gen-errors.ts');
});

test('ThawError carries code, kind, status, hint and cause', () => {
  const cause = new Error('disk on fire');
  const e = new ThawError('SEED_CORRUPT', 'bad seed', { cause, details: { file: 'disk.img' } });
  assert.equal(e.code, 'SEED_CORRUPT');
  assert.equal(e.kind, 'system');
  assert.equal(e.status, 500);
  assert.equal(e.cause, cause);
  assert.deepEqual(e.toJSON().details, { file: 'disk.img' });
  assert.equal(asThawError(new Error('x')).code, 'INTERNAL');
  assert.equal(asThawError(e), e);
});
