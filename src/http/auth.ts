// Bearer-token check for the control API, compared in constant time.
import { createHash, timingSafeEqual } from 'node:crypto';
import { ThawError } from '../errors.ts';

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/** Returns a checker for `Authorization` header values; throws UNAUTHORIZED on mismatch. */
export function bearerChecker(token: string): (header: string | undefined) => void {
  if (token.length < 16) throw new ThawError('INTERNAL', 'the API token must be at least 16 characters');
  const want = digest(token);
  return (header) => {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
    // Hashing first makes both sides 32 bytes, so timingSafeEqual never sees a length difference.
    const ok = m !== null && timingSafeEqual(digest(m[1]!), want);
    if (!ok) throw new ThawError('UNAUTHORIZED', header ? 'invalid API token' : 'missing Authorization: Bearer header');
  };
}
