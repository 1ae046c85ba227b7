// A VM's outbound policy, as the user gives it: `--egress none` (no outbound
// traffic at all, DNS included) or the default, the internet (public
// addresses only), plus an allow-list of `CIDR[:PORT]` entries that opens a
// service the tenant may reach even at a private address (a shared database).
// The host itself is never reachable, allow-listed or not.
import { ThawError } from '../errors.ts';

export interface EgressRule {
  /** IPv4 network, normalized: `a.b.c.d/len` with host bits zero. */
  cidr: string;
  /** TCP/UDP port; absent: every port. */
  port?: number;
}

export interface Egress {
  /** `internet`: public addresses; `none`: nothing but the allow-list. */
  mode: 'internet' | 'none';
  allow: EgressRule[];
}

export const DEFAULT_EGRESS: Egress = { mode: 'internet', allow: [] };

/** Most allow-list entries per app. */
export const MAX_ALLOW = 32;

export function ipToInt(ip: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m) return null;
  const o = m.slice(1).map(Number);
  if (o.some((x) => x > 255)) return null;
  return ((o[0]! << 24) | (o[1]! << 16) | (o[2]! << 8) | o[3]!) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Parse `A.B.C.D[/LEN][:PORT]`. Errors: EGRESS_INVALID. */
export function parseEgressRule(s: string): EgressRule {
  const bad = (why: string) => new ThawError('EGRESS_INVALID', `egress allow entry "${s}": ${why}`);
  const m = /^([0-9.]+)(?:\/(\d{1,2}))?(?::(\d{1,5}))?$/.exec(s.trim());
  if (!m) throw bad('expected an IPv4 address or CIDR, optionally with :PORT (IPv6 is not routed to guests)');
  const ip = ipToInt(m[1]!);
  if (ip === null) throw bad('not an IPv4 address');
  const len = m[2] === undefined ? 32 : Number(m[2]);
  if (len > 32) throw bad('prefix length must be 0..32');
  if (len < 8) throw bad('prefix shorter than /8 is too wide for an allow-list');
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  const rule: EgressRule = { cidr: `${intToIp((ip & mask) >>> 0)}/${len}` };
  if (m[3] !== undefined) {
    const port = Number(m[3]);
    if (port < 1 || port > 65535) throw bad('port must be 1..65535');
    rule.port = port;
  }
  return rule;
}

/** Build a policy from `--egress` and `--egress-allow` values. Errors: EGRESS_INVALID. */
export function parseEgress(mode: string | undefined, allow: readonly string[] = []): Egress {
  const m = mode ?? 'internet';
  if (m !== 'internet' && m !== 'none') throw new ThawError('EGRESS_INVALID', `--egress must be "internet" or "none", not "${m}"`);
  if (allow.length > MAX_ALLOW) throw new ThawError('EGRESS_INVALID', `at most ${MAX_ALLOW} egress allow entries`);
  return { mode: m, allow: allow.map(parseEgressRule) };
}

export function formatEgressRule(r: EgressRule): string {
  return r.port ? `${r.cidr}:${r.port}` : r.cidr;
}

/** The `x-thaw-egress` header: `MODE[ ENTRY,ENTRY...]`. */
export function egressHeader(e: Egress): string {
  return [e.mode, e.allow.map(formatEgressRule).join(',')].filter(Boolean).join(' ');
}

/** Parse the `x-thaw-egress` header. Errors: EGRESS_INVALID. */
export function parseEgressHeader(h: string): Egress {
  const [mode, list] = h.trim().split(/\s+/, 2);
  return parseEgress(mode, list ? list.split(',') : []);
}
