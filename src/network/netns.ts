// One VM's network, Firecracker-host style: a network namespace `thv-TAG-N`
// holding the guest's TAP (`tap0`, 10.0.2.2/24, the gateway the guest image
// expects) and one end of a veth pair; the other end (`thv-TAG-Nh`) stays in
// the node's namespace. Each slot N owns the /30 `THAW_VM_SUBNET + 4N`:
// .1 host side, .2 namespace side (the address the router connects to, DNATed
// to the guest). Every guest keeps 10.0.2.15: namespaces make that unique.
// TAG is a hash of the node's data folder, so a restarted node finds (and
// removes) exactly its own leftovers; slot numbers are claimed machine-wide
// with lock files in /run/thaw-net (tmpfs, gone with the namespaces at reboot).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { intToIp, ipToInt } from './egress.ts';
import { render, vmTable, type VmNet } from './nft.ts';
import type { Egress } from './egress.ts';

export const GUEST_IP = '10.0.2.15';
export const GUEST_GW = '10.0.2.2';
/** The resolver the guest agent writes into /etc/resolv.conf (QEMU user-mode's DNS address). */
export const GUEST_DNS = '10.0.2.3';
/** QEMU user-mode's gateway MAC: the guest's ARP cache in a seed names it, so every TAP wears it. */
export const GW_MAC = '52:55:0a:00:02:02';
export const TAP_IF = 'tap0';
export const NETNS_PREFIX = 'thv-';
export const LOCK_DIR = process.env.THAW_NET_LOCK_DIR ?? '/run/thaw-net';
export const MAX_SLOTS = 10_000;

export interface Slot {
  index: number;
  /** Namespace name (`ip netns`), also the prefix of both veth names. */
  netns: string;
  hostIf: string;
  nsIf: string;
  hostIp: string;
  nsIp: string;
  tap: string;
}

/** Five hex digits naming a node's data folder. */
export function nodeTag(dataDir: string): string {
  return createHash('sha256').update(path.resolve(dataDir)).digest('hex').slice(0, 5);
}

export function slotOf(tag: string, index: number, subnet: string): Slot {
  const [base] = subnet.split('/');
  const b = ipToInt(base!);
  if (b === null) throw new ThawError('INTERNAL', `bad VM subnet ${subnet}`);
  const net = b + index * 4;
  const netns = `${NETNS_PREFIX}${tag}-${index}`;
  return { index, netns, hostIf: `${netns}h`, nsIf: `${netns}g`, hostIp: intToIp(net + 1), nsIp: intToIp(net + 2), tap: TAP_IF };
}

/** Run a tool (stdin optional); rejects with NETWORK_SETUP_FAILED and its stderr on a non-zero exit. */
export function sh(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'ENOENT' ? new ThawError('HOST_MISSING_TOOL', `${cmd} is not installed (apt-get install iproute2 nftables util-linux)`, { cause: e }) : e),
    );
    child.on('close', (code) => {
      if (code === 0) resolve(out);
      else reject(new ThawError('NETWORK_SETUP_FAILED', `${cmd} ${args.slice(0, 4).join(' ')}: ${err.trim().slice(-500) || `exit ${code}`}`));
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** Run `nft -f -` inside a namespace (`null`: the node's own). */
export function nft(netns: string | null, script: string): Promise<string> {
  return netns ? sh('nsenter', [`--net=/run/netns/${netns}`, '--', 'nft', '-f', '-'], script) : sh('nft', ['-f', '-'], script);
}

/** IPv4 addresses of the node's own namespace (all of them are off limits to guests). */
export function hostAddresses(): string[] {
  return Object.entries(os.networkInterfaces())
    .filter(([name]) => !name.startsWith(NETNS_PREFIX))
    .flatMap(([, a]) => (a ?? []).filter((x) => x.family === 'IPv4').map((x) => x.address));
}

/** Claim a free slot number machine-wide (a lock file holding TAG). */
export async function claimSlot(tag: string): Promise<number> {
  await mkdir(LOCK_DIR, { recursive: true, mode: 0o700 });
  const start = Math.floor(Math.random() * MAX_SLOTS);
  for (let k = 0; k < MAX_SLOTS; k++) {
    const i = (start + k) % MAX_SLOTS;
    try {
      const fh = await open(path.join(LOCK_DIR, `slot-${i}`), 'wx', 0o600);
      await fh.writeFile(tag);
      await fh.close();
      return i;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  throw new ThawError('NETWORK_SETUP_FAILED', `all ${MAX_SLOTS} VM network slots are taken`);
}

/** Slot numbers whose lock names TAG. */
export async function ownedSlots(tag: string): Promise<number[]> {
  const out: number[] = [];
  for (const f of await readdir(LOCK_DIR).catch(() => [] as string[])) {
    const m = /^slot-(\d+)$/.exec(f);
    if (m && (await readFile(path.join(LOCK_DIR, f), 'utf8').catch(() => '')) === tag) out.push(Number(m[1]));
  }
  return out;
}

export interface NetnsOptions {
  subnet: string;
  /** Owner of the TAP (the VMM's uid and gid); absent: root. */
  owner?: { uid: number; gid: number };
  resolver: string | null;
}

export function vmNet(slot: Slot, resolver: string | null): VmNet {
  return { vethIf: slot.nsIf, vethIp: slot.nsIp, tapIf: slot.tap, guestIp: GUEST_IP, guestDns: GUEST_DNS, resolver, hostAddrs: hostAddresses() };
}

/** Create the slot's namespace, veth pair, TAP and table (policy `egress`). Undone by destroyNetns on failure. */
export async function createNetns(slot: Slot, o: NetnsOptions, egress: Egress): Promise<void> {
  try {
    await sh('ip', ['netns', 'add', slot.netns]);
    await sh('ip', ['-batch', '-'], [
      `link add ${slot.hostIf} type veth peer name ${slot.nsIf} netns ${slot.netns}`,
      `addr add ${slot.hostIp}/30 dev ${slot.hostIf}`,
      `link set ${slot.hostIf} up`,
      '',
    ].join('\n'));
    const owner = o.owner ? ` user ${o.owner.uid} group ${o.owner.gid}` : '';
    await sh('ip', ['-n', slot.netns, '-batch', '-'], [
      'link set lo up',
      `addr add ${slot.nsIp}/30 dev ${slot.nsIf}`,
      `link set ${slot.nsIf} up`,
      `route add default via ${slot.hostIp}`,
      `tuntap add dev ${slot.tap} mode tap${owner}`,
      `link set ${slot.tap} address ${GW_MAC}`,
      `addr add ${GUEST_GW}/24 dev ${slot.tap}`,
      `link set ${slot.tap} up`,
      '',
    ].join('\n'));
    await sh('nsenter', [`--net=/run/netns/${slot.netns}`, '--', 'sh', '-c', 'sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.disable_ipv6=1 && exec nft -f -'], render(vmTable(vmNet(slot, o.resolver), egress)));
  } catch (err) {
    await destroyNetns(slot);
    throw err;
  }
}

/** Remove the slot's namespace (with its TAP), its veth pair and its lock. Idempotent, never throws. */
export async function destroyNetns(slot: Slot): Promise<void> {
  await sh('ip', ['link', 'del', slot.hostIf]).catch(() => {});
  await sh('ip', ['netns', 'del', slot.netns]).catch(() => {});
  await rm(path.join(LOCK_DIR, `slot-${slot.index}`), { force: true });
}

/** Names of this machine's per-VM namespaces (every node's), for checks and tests. */
export async function listNetns(prefix = NETNS_PREFIX): Promise<string[]> {
  const out = await sh('ip', ['netns', 'list']).catch(() => '');
  return out.split('\n').map((l) => l.split(' ')[0]!).filter((n) => n && n.startsWith(prefix));
}
