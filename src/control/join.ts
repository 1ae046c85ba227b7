// TLS of the control API and the join command for new nodes. `thaw up --tls`
// makes a cluster CA (DATA/tls/ca.crt, ca.key, kept across restarts) and an API
// certificate it signs for every address of this host; `--tls-cert/--tls-key`
// use the operator's own. Nodes pin the CA's fingerprint (printed in the join
// command) or trust the CA file. Without TLS on a non-loopback address, a loud
// warning.
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { ThawError } from '../errors.ts';
import { ensureClusterCa, ensureServerCert, hostNames } from '../http/certs.ts';
import { fingerprintOf, loadServerTls, type ServerTls } from '../http/tls.ts';

export interface ControlTlsOptions {
  /** Make and use a cluster CA in DATA/tls. */
  tls?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  /** Nodes' certificates must chain to this CA file (default: pin what each node reports at join). */
  nodeCa?: string;
}

export interface ControlTls {
  server: ServerTls;
  /** What clients pin: the cluster CA's fingerprint, or the operator certificate's own. */
  fingerprint: string;
  /** The cluster CA file (generated CA only). */
  caFile: string | null;
}

/** null without TLS flags; TLS_CONFIG_INVALID for half a pair. */
export async function controlTls(o: ControlTlsOptions, data: string, apiHost: string): Promise<ControlTls | null> {
  if (!!o.tlsCert !== !!o.tlsKey) throw new ThawError('TLS_CONFIG_INVALID', 'pass --tls-cert and --tls-key together');
  if (o.tlsCert && o.tlsKey) {
    const server = await loadServerTls({ cert: o.tlsCert, key: o.tlsKey });
    return { server, fingerprint: fingerprintOf(server.cert), caFile: null };
  }
  if (!o.tls) return null;
  const dir = path.join(data, 'tls');
  const ca = await ensureClusterCa(dir);
  const files = await ensureServerCert({ cert: path.join(dir, 'api.crt'), key: path.join(dir, 'api.key') }, { cn: 'thaw control plane', names: [apiHost, ...hostNames()], ca });
  const caPem = await readFile(ca.cert, 'utf8');
  return { server: await loadServerTls(files, caPem), fingerprint: fingerprintOf(caPem), caFile: ca.cert };
}

export async function readNodeCa(file: string | undefined): Promise<string | undefined> {
  if (!file) return undefined;
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new ThawError('TLS_CONFIG_INVALID', `cannot read --node-ca ${file}: ${(err as Error).message}`, { cause: err });
  }
}

const isWildcard = (h: string) => h === '0.0.0.0' || h === '::';
const hostPart = (h: string) => (net.isIPv6(h) ? `[${h}]` : h);

/** A URL a client on this host can use for a server bound to `host` (a wildcard becomes loopback). */
export function localUrl(scheme: 'http' | 'https', host: string, port: number): string {
  return `${scheme}://${isWildcard(host) ? (host === '::' ? '[::1]' : '127.0.0.1') : hostPart(host)}:${port}`;
}

/** The address other hosts reach a server bound to `host` at: itself, or for a wildcard this host's first external IPv4. */
export function networkHost(host: string): string {
  if (!isWildcard(host)) return host;
  const ext = Object.values(os.networkInterfaces()).flatMap((l) => l ?? []).find((a) => a.family === 'IPv4' && !a.internal);
  return ext?.address ?? os.hostname();
}

/** The command that joins a node on another host (it holds the cluster token: show it only to operators). */
export function joinCommand(o: { apiUrl: string; token: string; fingerprint: string | null }): string {
  return [
    'thaw node --control', o.apiUrl, '--token', o.token,
    ...(o.fingerprint ? ['--control-fingerprint', o.fingerprint] : []),
    '--name NAME --host NODE_ADDR --data /srv/thaw-node',
  ].join(' ');
}
