// Dashboard sign-in (src/api/ui.ts): one-time login codes and browser
// sessions, kept in memory (a restart of `thaw up` signs everyone out).
// A code (from `thaw dashboard`, over the bearer-token API) works once and
// for CODE_TTL_MS; redeeming it creates a session whose id goes into an
// HttpOnly, SameSite=Strict cookie. Each session has a CSRF token the page
// reads from /ui/api/session and sends back as `x-csrf-token` on actions.
// Only SHA-256 digests of codes and session ids are stored; comparisons go
// through those digests (a Map lookup on a digest leaks nothing useful).
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { ThawError } from '../errors.ts';

export const CODE_TTL_MS = 5 * 60_000;
export const SESSION_TTL_MS = 12 * 3600_000;
export const SESSION_COOKIE = 'thaw_session';

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');
const token = () => randomBytes(24).toString('base64url');

export interface Session {
  csrf: string;
  expiresAt: number;
}

export class Sessions {
  private readonly codes = new Map<string, number>();
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly now: () => number = Date.now) {}

  /** A fresh single-use login code; `expiresAt` in ms since the epoch. */
  issueCode(): { code: string; expiresAt: number } {
    this.sweep();
    const code = token();
    const expiresAt = this.now() + CODE_TTL_MS;
    this.codes.set(digest(code), expiresAt);
    return { code, expiresAt };
  }

  /** Spend a code (any outcome removes it); a new session, or LOGIN_CODE_INVALID. */
  redeem(code: string): { id: string; session: Session } {
    const key = digest(code);
    const exp = this.codes.get(key);
    this.codes.delete(key);
    if (exp === undefined || exp <= this.now()) throw new ThawError('LOGIN_CODE_INVALID', 'this login code is unknown, used or expired');
    const id = token();
    const session = { csrf: token(), expiresAt: this.now() + SESSION_TTL_MS };
    this.sessions.set(digest(id), session);
    return { id, session };
  }

  /** The session named by the request's Cookie header, or SESSION_REQUIRED. */
  fromCookie(cookieHeader: string | undefined): Session {
    const id = readCookie(cookieHeader, SESSION_COOKIE);
    const s = id ? this.sessions.get(digest(id)) : undefined;
    if (!s || s.expiresAt <= this.now()) throw new ThawError('SESSION_REQUIRED', 'no dashboard session: sign in through `thaw dashboard`');
    return s;
  }

  /** CSRF_TOKEN_INVALID unless `header` is the session's token. */
  checkCsrf(s: Session, header: string | string[] | undefined): void {
    const got = Buffer.from(digest(typeof header === 'string' ? header : ''), 'hex');
    if (!timingSafeEqual(got, Buffer.from(digest(s.csrf), 'hex'))) throw new ThawError('CSRF_TOKEN_INVALID', 'missing or wrong x-csrf-token header');
  }

  /** Sign out: forget the cookie's session (no error when there is none). */
  end(cookieHeader: string | undefined): void {
    const id = readCookie(cookieHeader, SESSION_COOKIE);
    if (id) this.sessions.delete(digest(id));
  }

  private sweep(): void {
    const t = this.now();
    for (const [k, exp] of this.codes) if (exp <= t) this.codes.delete(k);
    for (const [k, s] of this.sessions) if (s.expiresAt <= t) this.sessions.delete(k);
  }
}

/** The value of cookie `name` in a Cookie header, or null. */
export function readCookie(header: string | undefined, name: string): string | null {
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim() || null;
  }
  return null;
}

/** Set-Cookie value for a session (scoped to /ui, never sent cross-site, invisible to scripts). */
export function sessionCookie(id: string): string {
  return `${SESSION_COOKIE}=${id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=${SESSION_TTL_MS / 1000}`;
}
