// nftables rules as data: each table is a plain object (sets, maps, chains of
// rule strings) rendered to one `nft -f` script and applied atomically. Two
// tables exist:
// - `thv_host`, once per host network namespace: no VM reaches the host (input),
//   no VM reaches another VM (forward), VM traffic leaving the host is NATed,
//   and a node's advertised address forwards to each VM's DNAT (map `fwd`).
// - `thv`, in every VM's namespace: the router's DNAT to the guest, the
//   guest's DNS DNAT, the NAT out of the namespace, and the VM's egress policy.
import type { Egress } from './egress.ts';

export interface Chain {
  name: string;
  /** Base chain: `type T hook H priority P; policy X;`. Absent: a regular chain (jump target). */
  base?: { type: 'filter' | 'nat'; hook: 'prerouting' | 'input' | 'forward' | 'output' | 'postrouting'; priority: string; policy: 'accept' | 'drop' };
  rules: string[];
}

export interface Table {
  family: 'inet' | 'ip';
  name: string;
  /** Set and map definitions, verbatim bodies keyed by name. */
  sets: Record<string, string>;
  maps: Record<string, string>;
  chains: Chain[];
}

/** Render a table; `replace` deletes an existing table of that name in the same transaction. */
export function render(t: Table, replace = true): string {
  const out: string[] = [];
  if (replace) out.push(`table ${t.family} ${t.name} {}`, `delete table ${t.family} ${t.name}`);
  out.push(`table ${t.family} ${t.name} {`);
  for (const [n, body] of Object.entries(t.sets)) out.push(`  set ${n} { ${body} }`);
  for (const [n, body] of Object.entries(t.maps)) out.push(`  map ${n} { ${body} }`);
  for (const c of t.chains) {
    out.push(`  chain ${c.name} {`);
    if (c.base) out.push(`    type ${c.base.type} hook ${c.base.hook} priority ${c.base.priority}; policy ${c.base.policy};`);
    for (const r of c.rules) out.push(`    ${r}`);
    out.push('  }');
  }
  out.push('}');
  return `${out.join('\n')}\n`;
}

/** Interface name prefix of every per-VM veth on the host (`thv-TAG-N` + `h`). */
export const VETH_GLOB = 'thv-*';
export const HOST_TABLE = 'thv_host';
export const VM_TABLE = 'thv';

/** Ranges a guest never reaches unless allow-listed (RFC 1918, CGNAT, loopback, link-local, multicast, reserved). */
export const BLOCKED_V4 = ['0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12', '192.168.0.0/16', '224.0.0.0/4', '240.0.0.0/4'];

/** The host table: shared by every node in this network namespace, created once. */
export function hostTable(vmSubnet: string): Table {
  const fromVm = `iifname "${VETH_GLOB}"`;
  return {
    family: 'inet',
    name: HOST_TABLE,
    sets: {},
    // advertised address . host port  ->  VM's veth address . app port
    maps: { vmports: 'type ipv4_addr . inet_service : ipv4_addr . inet_service;' },
    chains: [
      { name: 'prerouting', base: { type: 'nat', hook: 'prerouting', priority: '-100', policy: 'accept' }, rules: [`${fromVm} return`, 'dnat ip to ip daddr . tcp dport map @vmports'] },
      { name: 'output', base: { type: 'nat', hook: 'output', priority: '-100', policy: 'accept' }, rules: ['dnat ip to ip daddr . tcp dport map @vmports'] },
      { name: 'postrouting', base: { type: 'nat', hook: 'postrouting', priority: '100', policy: 'accept' }, rules: [`ip saddr ${vmSubnet} oifname != "${VETH_GLOB}" masquerade`] },
      // A VM never talks to the host itself, whatever address it uses; replies to the router's connections pass.
      { name: 'input', base: { type: 'filter', hook: 'input', priority: '0', policy: 'accept' }, rules: [`${fromVm} ct state established,related accept`, `${fromVm} drop`] },
      {
        name: 'forward',
        base: { type: 'filter', hook: 'forward', priority: '0', policy: 'accept' },
        rules: [`${fromVm} oifname "${VETH_GLOB}" drop`, `${fromVm} meta nfproto ipv6 drop`],
      },
    ],
  };
}

export interface VmNet {
  /** Namespace side of the veth (name inside the namespace). */
  vethIf: string;
  /** Address the router connects to (namespace side of the veth). */
  vethIp: string;
  /** Guest-facing TAP device. */
  tapIf: string;
  /** The frozen guest address and the address its resolv.conf names. */
  guestIp: string;
  guestDns: string;
  /** Upstream resolver the guest's DNS is forwarded to (null: none). */
  resolver: string | null;
  /** Every address of the host (blocked even where they are public). */
  hostAddrs: string[];
}

/** The egress chain: what the guest may open, in order. */
export function egressRules(net: Pick<VmNet, 'resolver' | 'hostAddrs'>, egress: Egress): string[] {
  const r: string[] = [];
  if (egress.mode === 'internet' && net.resolver) {
    r.push(`ip daddr ${net.resolver} udp dport 53 accept`, `ip daddr ${net.resolver} tcp dport 53 accept`);
  }
  for (const a of egress.allow) {
    if (a.port) r.push(`ip daddr ${a.cidr} tcp dport ${a.port} accept`, `ip daddr ${a.cidr} udp dport ${a.port} accept`);
    else r.push(`ip daddr ${a.cidr} accept`);
  }
  if (egress.mode === 'none') return [...r, 'drop'];
  if (net.hostAddrs.length) r.push(`ip daddr { ${net.hostAddrs.join(', ')} } drop`);
  r.push(`ip daddr { ${BLOCKED_V4.join(', ')} } drop`, 'meta nfproto ipv4 accept', 'drop');
  return r;
}

/** The table inside a VM's namespace. */
export function vmTable(net: VmNet, egress: Egress): Table {
  const dns = net.resolver
    ? [`iifname "${net.tapIf}" ip daddr ${net.guestDns} udp dport 53 dnat ip to ${net.resolver}`, `iifname "${net.tapIf}" ip daddr ${net.guestDns} tcp dport 53 dnat ip to ${net.resolver}`]
    : [];
  return {
    family: 'inet',
    name: VM_TABLE,
    sets: {},
    maps: {},
    chains: [
      { name: 'prerouting', base: { type: 'nat', hook: 'prerouting', priority: '-100', policy: 'accept' }, rules: [...dns, `iifname "${net.vethIf}" ip daddr ${net.vethIp} meta l4proto tcp dnat ip to ${net.guestIp}`] },
      { name: 'postrouting', base: { type: 'nat', hook: 'postrouting', priority: '100', policy: 'accept' }, rules: [`oifname "${net.vethIf}" ip saddr ${net.guestIp} masquerade`] },
      // Nothing in the namespace itself answers the guest (10.0.2.2 is only a gateway).
      { name: 'input', base: { type: 'filter', hook: 'input', priority: '0', policy: 'drop' }, rules: ['iifname "lo" accept', 'ct state established,related accept'] },
      {
        name: 'forward',
        base: { type: 'filter', hook: 'forward', priority: '0', policy: 'drop' },
        rules: [
          'ct state established,related accept',
          `iifname "${net.vethIf}" oifname "${net.tapIf}" ip daddr ${net.guestIp} meta l4proto tcp ct status dnat accept`,
          `iifname "${net.tapIf}" oifname "${net.vethIf}" ip saddr ${net.guestIp} jump egress`,
        ],
      },
      { name: 'egress', rules: egressRules(net, egress) },
    ],
  };
}

/** Replace only the egress chain of a namespace's table (one transaction). */
export function egressUpdate(net: Pick<VmNet, 'resolver' | 'hostAddrs'>, egress: Egress): string {
  return [`flush chain inet ${VM_TABLE} egress`, ...egressRules(net, egress).map((r) => `add rule inet ${VM_TABLE} egress ${r}`), ''].join('\n');
}
