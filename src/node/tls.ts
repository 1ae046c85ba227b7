// TLS for `thaw node`: how it checks the control plane (--control-ca FILE or
// --control-fingerprint, else the system CAs), and the certificate its own API
// serves (--tls-cert/--tls-key, else, when the control plane speaks https, a
// self-signed one kept in DATA/node/tls whose fingerprint the node reports in
// its heartbeat and the control plane pins at join). Plain HTTP across a
// network is allowed, with a loud warning.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { ThawError } from '../errors.ts';
import { ensureServerCert, hostNames } from '../http/certs.ts';
import { crossesNetwork, fingerprintOf, loadServerTls, normalizeFingerprint, plainHttpWarning, type PeerTrust, type ServerTls } from '../http/tls.ts';

export interface NodeTlsOptions {
  control: string;
  controlCa?: string;
  controlFingerprint?: string;
  tlsCert?: string;
  tlsKey?: string;
}

export interface NodeTls {
  /** How the node checks the control plane. */
  controlTrust: PeerTrust;
  /** What the node API serves; null: plain HTTP. */
  server: ServerTls | null;
  /** Fingerprint of the served certificate (reported in heartbeats). */
  fingerprint: string | undefined;
}

/** TLS_CONFIG_INVALID for contradictory flags; reads and, if needed, makes certificates. */
export async function nodeTls(o: NodeTlsOptions, dir: string, names: string[], log: Logger): Promise<NodeTls> {
  const https = new URL(o.control).protocol === 'https:';
  if ((o.controlCa || o.controlFingerprint) && !https) {
    throw new ThawError('TLS_CONFIG_INVALID', `--control-ca/--control-fingerprint need an https:// --control URL (got ${o.control})`);
  }
  if (!!o.tlsCert !== !!o.tlsKey) throw new ThawError('TLS_CONFIG_INVALID', 'pass --tls-cert and --tls-key together');
  let controlTrust: PeerTrust = {};
  if (o.controlFingerprint) controlTrust = { fingerprint: normalizeFingerprint(o.controlFingerprint) };
  else if (o.controlCa) {
    try {
      controlTrust = { ca: await readFile(o.controlCa, 'utf8') };
    } catch (err) {
      throw new ThawError('TLS_CONFIG_INVALID', `cannot read --control-ca ${o.controlCa}: ${(err as Error).message}`, { cause: err });
    }
  }
  if (!https && crossesNetwork(o.control)) log.warn(plainHttpWarning('the control plane at', o.control));
  let files = o.tlsCert && o.tlsKey ? { cert: o.tlsCert, key: o.tlsKey } : null;
  if (!files && https) {
    // The control plane pins this certificate's fingerprint when the node joins; no CA needed.
    files = await ensureServerCert({ cert: path.join(dir, 'node.crt'), key: path.join(dir, 'node.key') }, { cn: 'thaw node', names: [...names, ...hostNames()] });
  }
  const server = files ? await loadServerTls(files) : null;
  return { controlTrust, server, fingerprint: server ? fingerprintOf(server.cert) : undefined };
}
