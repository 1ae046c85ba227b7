// Can this host give every VM its own network namespace? Needs root,
// /dev/net/tun, iproute2 (`ip`, `nsenter`) and nftables. Otherwise the node
// falls back to QEMU user-mode networking, where a guest reaches the host's
// services through 10.0.2.2: `thaw doctor` and `thaw up` warn about it.
// THAW_NET=user forces the fallback (tests of it, or a host that must not get
// ip_forward=1).
import { existsSync } from 'node:fs';
import type { Logger } from 'pino';
import { NetPool, type PoolOptions } from './pool.ts';
import { sh } from './netns.ts';

export interface NetSupport {
  isolated: boolean;
  /** Why not (null when isolated). */
  reason: string | null;
}

export const NOT_ISOLATED = 'tenants are NOT isolated: QEMU user-mode networking lets every guest reach the host and its local services (10.0.2.2)';

export async function netSupport(): Promise<NetSupport> {
  const no = (why: string): NetSupport => ({ isolated: false, reason: `${why}; ${NOT_ISOLATED}` });
  if (process.env.THAW_NET === 'user') return no('THAW_NET=user');
  if (process.getuid?.() !== 0) return no('not running as root');
  if (!existsSync('/dev/net/tun')) return no('/dev/net/tun is missing');
  for (const [tool, args] of [['ip', ['-V']], ['nft', ['--version']], ['nsenter', ['--version']]] as const) {
    if (!(await sh(tool, [...args]).then(() => true, () => false))) return no(`${tool} is not installed (apt-get install iproute2 nftables util-linux)`);
  }
  return { isolated: true, reason: null };
}

/** The node's pool of VM namespaces, started (leftovers removed), or null with a logged warning. */
export async function startNetwork(o: PoolOptions & { log: Logger }): Promise<NetPool | null> {
  const s = await netSupport();
  if (!s.isolated) {
    o.log.warn({ reason: s.reason }, 'VM network: user-mode fallback');
    return null;
  }
  const pool = new NetPool(o);
  const t = performance.now();
  const r = await pool.start();
  o.log.info({ netnsTag: pool.tag, subnet: pool.subnet, removedLeftovers: r.removed, ms: Math.round(performance.now() - t) }, 'VM network: one namespace per VM');
  return pool;
}
