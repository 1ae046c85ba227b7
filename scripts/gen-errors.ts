// Writes docs/ERRORS.md from the one list of codes in src/errors.ts.
import { writeFile } from 'node:fs/promises';
import { ERROR_CODES } from '../src/errors.ts';

export function renderErrors(): string {
  const rows = Object.entries(ERROR_CODES).map(([code, i]) => `| \`${code}\` | ${i.kind} | ${i.status} | ${i.hint} |`);
  return [
    '# Error codes',
    '',
    'Generated from `src/errors.ts` by `node --import tsx scripts/gen-errors.ts`; do not edit by hand.',
    '',
    'Every error Thaw reports (API body `{"error":{"code","kind","message","hint","details"}}`, CLI `error CODE: message`)',
    'carries one of these stable codes. `kind` is `user` when the caller can fix it, `system` when Thaw or the host failed.',
    'CLI exit codes: 1 for user errors, 2 for system errors, 3 for NOT_RUNNING, 64 for usage errors.',
    '',
    '| code | kind | HTTP | what to do |',
    '| --- | --- | --- | --- |',
    ...rows,
    '',
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) await writeFile(new URL('../docs/ERRORS.md', import.meta.url), renderErrors());
