// Schema parsing for every HTTP boundary (control API, node API, CLI input):
// parseOrThrow() maps a failed zod parse onto a ThawError. A refinement
// carrying `params.thawCode` (see coded()) selects that code, anything else
// is INVALID_REQUEST with the zod issue paths in `details.issues`.
import type { z } from 'zod';
import { ERROR_CODES, ThawError, type ErrorCode } from '../errors.ts';

/** zod refinement options that make a failed check throw `thawCode` from parseOrThrow(). */
export const coded = (thawCode: ErrorCode, message: string) => ({ message, params: { thawCode } });

interface LooseIssue {
  path?: PropertyKey[];
  message: string;
  params?: { thawCode?: string };
  issues?: LooseIssue[];
}

function findCode(issues: LooseIssue[]): { code: ErrorCode; issue: LooseIssue } | null {
  for (const issue of issues) {
    const c = issue.params?.thawCode;
    if (c && c in ERROR_CODES) return { code: c as ErrorCode, issue };
    const inner = issue.issues ? findCode(issue.issues) : null;
    if (inner) return { code: inner.code, issue: { ...inner.issue, path: issue.path } };
  }
  return null;
}

const pathOf = (p: PropertyKey[] | undefined) => (p ?? []).map((s) => (typeof s === 'symbol' ? String(s) : s));

/** Parse `data` or throw a ThawError (see the file comment). `where` names the input, e.g. "body". */
export function parseOrThrow<S extends z.ZodType>(schema: S, data: unknown, where: string): z.output<S> {
  const r = schema.safeParse(data);
  if (r.success) return r.data;
  const issues = r.error.issues as unknown as LooseIssue[];
  const found = findCode(issues);
  if (found) {
    const path = pathOf(found.issue.path);
    throw new ThawError(found.code, `${where}${path.length ? ` at ${path.join('.')}` : ''}: ${found.issue.message}`, { details: { where, path } });
  }
  const list = issues.map((i) => ({ path: pathOf(i.path), message: i.message }));
  const first = list[0];
  const at = first && first.path.length ? ` at ${first.path.join('.')}` : '';
  throw new ThawError('INVALID_REQUEST', `invalid ${where}${at}: ${first?.message ?? 'schema mismatch'}`, { details: { where, issues: list } });
}
