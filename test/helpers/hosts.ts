// Test and bench helper: "hosts" on one machine. Each host is a network
// namespace (PREFIX-NAME) with one veth link into a shared bridge
// (PREFIX-br0) in the root namespace, which holds the gateway address: the
// control plane, router, S3 server and test client live there. Hosts reach
// each other and the root only over the bridge, as machines on one LAN would.
// cut(name) sets a host's link down; heal(name) brings it back. Every name
// carries the prefix; close() removes what create made (and leftovers of a
// killed earlier run with the same prefix).
import { execFileSync } from 'node:child_process';

export interface Host {
  name: string;
  netns: string;
  /** The host's address on the bridge. */
  ip: string;
  /** Root-side end of its veth pair (in the bridge). */
  link: string;
}

export interface HostNet {
  bridge: string;
  /** The root namespace's address on the bridge. */
  gateway: string;
  hosts: Map<string, Host>;
  /** argv prefix that runs a command on `name`. */
  exec(name: string): string[];
  cut(name: string): void;
  heal(name: string): void;
  close(): void;
}

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
const quiet = (...args: string[]) => {
  try {
    ip(...args);
  } catch {
    /* already gone */
  }
};

/** `subnet`: the first three octets of a /24 nothing else on this machine uses. */
export function createHostNet(names: string[], o: { prefix?: string; subnet?: string } = {}): HostNet {
  const prefix = o.prefix ?? 'thawhost';
  const subnet = o.subnet ?? '10.199.17';
  const bridge = `${prefix}-br0`;
  const hosts = new Map<string, Host>();
  names.forEach((name, i) => hosts.set(name, { name, netns: `${prefix}-${name}`, ip: `${subnet}.${i + 2}`, link: `${prefix}-${name}0` }));
  const close = () => {
    for (const h of hosts.values()) {
      quiet('link', 'del', h.link);
      quiet('netns', 'del', h.netns);
    }
    quiet('link', 'del', bridge);
  };
  close(); // leftovers of a killed run
  try {
    ip('link', 'add', bridge, 'type', 'bridge');
    ip('addr', 'add', `${subnet}.1/24`, 'dev', bridge);
    ip('link', 'set', bridge, 'up');
    for (const h of hosts.values()) {
      ip('netns', 'add', h.netns);
      ip('link', 'add', h.link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.netns);
      ip('link', 'set', h.link, 'master', bridge, 'up');
      ip('-n', h.netns, 'addr', 'add', `${h.ip}/24`, 'dev', 'eth0');
      ip('-n', h.netns, 'link', 'set', 'eth0', 'up');
      ip('-n', h.netns, 'link', 'set', 'lo', 'up');
      ip('-n', h.netns, 'route', 'add', 'default', 'via', `${subnet}.1`);
    }
  } catch (err) {
    close();
    throw err;
  }
  const host = (name: string) => {
    const h = hosts.get(name);
    if (!h) throw new Error(`no host ${name}`);
    return h;
  };
  return {
    bridge,
    gateway: `${subnet}.1`,
    hosts,
    exec: (name) => ['ip', 'netns', 'exec', host(name).netns],
    cut: (name) => ip('link', 'set', host(name).link, 'down'),
    heal: (name) => ip('link', 'set', host(name).link, 'up'),
    close,
  };
}
