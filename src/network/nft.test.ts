// Rules as data: the egress chain's order and the policy parser.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseEgress, parseEgressRule } from './egress.ts';
import { egressRules, hostTable, render, vmTable } from './nft.ts';

const net = { resolver: '10.255.255.53', hostAddrs: ['192.0.2.2'] };

test('internet egress: resolver on 53 first, then host and private ranges dropped, then IPv4 accepted', () => {
  const r = egressRules(net, { mode: 'internet', allow: [] });
  assert.deepEqual(r.slice(0, 2), ['ip daddr 10.255.255.53 udp dport 53 accept', 'ip daddr 10.255.255.53 tcp dport 53 accept']);
  assert.equal(r[2], 'ip daddr { 192.0.2.2 } drop');
  for (const cidr of ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16']) assert.ok(r[3]!.includes(cidr), cidr);
  assert.deepEqual(r.slice(-2), ['meta nfproto ipv4 accept', 'drop']);
});

test('an allow-list entry comes before the private-range drop; egress none ends in drop and has no DNS', () => {
  const allow = [parseEgressRule('10.1.2.3:5432')];
  const r = egressRules(net, { mode: 'internet', allow });
  assert.ok(r.indexOf('ip daddr 10.1.2.3/32 tcp dport 5432 accept') < r.findIndex((x) => x.includes('10.0.0.0/8')));
  const none = egressRules(net, { mode: 'none', allow });
  assert.deepEqual(none, ['ip daddr 10.1.2.3/32 tcp dport 5432 accept', 'ip daddr 10.1.2.3/32 udp dport 5432 accept', 'drop']);
});

test('the VM table DNATs the veth address to the guest and the guest DNS to the resolver; the host table drops VM-to-host and VM-to-VM', () => {
  const t = render(vmTable({ vethIf: 'v', vethIp: '10.213.0.2', tapIf: 'tap0', guestIp: '10.0.2.15', guestDns: '10.0.2.3', resolver: '9.9.9.9', hostAddrs: [] }, { mode: 'internet', allow: [] }));
  assert.match(t, /iifname "v" ip daddr 10\.213\.0\.2 meta l4proto tcp dnat ip to 10\.0\.2\.15/);
  assert.match(t, /ip daddr 10\.0\.2\.3 udp dport 53 dnat ip to 9\.9\.9\.9/);
  assert.match(t, /chain forward \{\n\s+type filter hook forward priority 0; policy drop;/);
  const h = render(hostTable('10.213.0.0/16'));
  assert.match(h, /iifname "thv-\*" drop/);
  assert.match(h, /iifname "thv-\*" oifname "thv-\*" drop/);
});

test('egress input is checked: bad modes, addresses, prefixes and ports get EGRESS_INVALID', () => {
  assert.deepEqual(parseEgressRule('198.51.100.7/24:443'), { cidr: '198.51.100.0/24', port: 443 });
  assert.deepEqual(parseEgress('none', ['1.2.3.4']), { mode: 'none', allow: [{ cidr: '1.2.3.4/32' }] });
  for (const bad of ['1.2.3', '1.2.3.256', '1.2.3.4/33', '1.2.3.4/4', '1.2.3.4:0', '1.2.3.4:70000', 'fc00::1', 'example.com:80', '']) {
    assert.throws(() => parseEgressRule(bad), (e: { code?: string }) => e.code === 'EGRESS_INVALID', bad);
  }
  assert.throws(() => parseEgress('open'), (e: { code?: string }) => e.code === 'EGRESS_INVALID');
});

test('the x-thaw-egress header round-trips a policy', async () => {
  const { egressHeader, parseEgressHeader } = await import('./egress.ts');
  const e = parseEgress('none', ['10.1.2.3:5432', '198.51.100.0/24']);
  assert.equal(egressHeader(e), 'none 10.1.2.3/32:5432,198.51.100.0/24');
  assert.deepEqual(parseEgressHeader(egressHeader(e)), e);
  assert.deepEqual(parseEgressHeader('internet'), { mode: 'internet', allow: [] });
});
