// TLS between the control plane and its nodes, shared by both ends: server
// options from cert/key files, and client connectors that verify the peer
// against a CA file (chain + hostname, as usual) or a pinned SHA-256
// fingerprint (the leaf, or a CA in the chain the server sends that signed it;
// no hostname check, like an SSH host key). Failures are ThawErrors with
// TLS_FINGERPRINT_MISMATCH or TLS_UNTRUSTED.
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { TLSSocket } from 'node:tls';
import { buildConnector, type Agent } from 'undici';
import { ThawError } from '../errors.ts';
import type { CertFiles } from './certs.ts';

/** PEM text a server presents: its certificate (followed by the CA that signed it, if any) and key. */
export interface ServerTls {
  cert: string;
  key: string;
}

/** How a client checks the server it talks to: a CA (PEM text) or a pinned fingerprint. Neither: the system CAs. */
export interface PeerTrust {
  ca?: string;
  fingerprint?: string;
}

/** `sha256:AB:CD:…`, `AB:CD:…` or bare hex -> 64 uppercase hex digits; TLS_CONFIG_INVALID otherwise. */
export function normalizeFingerprint(s: string): string {
  const hex = s.trim().replace(/^sha-?256:/i, '').replace(/:/g, '').toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) throw new ThawError('TLS_CONFIG_INVALID', `not a SHA-256 certificate fingerprint: ${JSON.stringify(s)} (expected sha256: and 32 hex bytes)`);
  return hex;
}

/** The printable fingerprint of the first certificate in `pem`: `sha256:AB:CD:…`. */
export function fingerprintOf(pem: string | Buffer): string {
  return `sha256:${new X509Certificate(pem).fingerprint256}`;
}

/** Server TLS from files; `chain` (the CA's PEM) is appended so clients pinning the CA see it. */
export async function loadServerTls(files: CertFiles, chain?: string): Promise<ServerTls> {
  try {
    const cert = await readFile(files.cert, 'utf8');
    const key = await readFile(files.key, 'utf8');
    new X509Certificate(cert); // refuse a non-certificate at start, not at the first handshake
    return { cert: chain ? `${cert.trimEnd()}\n${chain.trim()}\n` : cert, key };
  } catch (err) {
    throw new ThawError('TLS_CONFIG_INVALID', `cannot use --tls-cert ${files.cert} / --tls-key ${files.key}: ${(err as Error).message}`, { cause: err });
  }
}

/** Checks a TLS peer against a pinned fingerprint; null when it matches. */
export function checkPin(socket: TLSSocket, want: string, where: string): ThawError | null {
  const chain: X509Certificate[] = [];
  const seen = new Set<string>();
  for (let c = socket.getPeerCertificate(true); c?.raw && !seen.has(c.fingerprint256); c = c.issuerCertificate) {
    seen.add(c.fingerprint256);
    chain.push(new X509Certificate(c.raw));
  }
  const leaf = chain[0];
  const at = chain.findIndex((c) => c.fingerprint256.replace(/:/g, '') === want);
  // Every link from the leaf up to the pinned certificate must be a real signature.
  const linked = at >= 0 && chain.slice(0, at).every((c, i) => c.checkIssued(chain[i + 1]!) && c.verify(chain[i + 1]!.publicKey));
  if (!leaf || !linked) {
    return new ThawError('TLS_FINGERPRINT_MISMATCH', `${where} presented a certificate (${leaf ? `sha256:${leaf.fingerprint256}` : 'none'}) that does not match the pinned fingerprint sha256:${want.replace(/(..)(?!$)/g, '$1:')}`, {
      details: { presented: chain.map((c) => `sha256:${c.fingerprint256}`) },
    });
  }
  const now = Date.now();
  if (now < Date.parse(leaf.validFrom) || now > Date.parse(leaf.validTo)) {
    return new ThawError('TLS_UNTRUSTED', `${where} presented a certificate outside its validity (${leaf.validFrom} - ${leaf.validTo})`);
  }
  return null;
}

const UNTRUSTED = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|ALTNAME|HOSTNAME/;

/** A TLS verification failure from undici/Node as TLS_UNTRUSTED; anything else unchanged. */
export function tlsError(err: unknown, where: string): unknown {
  const code = (err as { code?: string } | null)?.code ?? '';
  if (err instanceof ThawError || !UNTRUSTED.test(code)) return err;
  return new ThawError('TLS_UNTRUSTED', `${where}: its certificate is not trusted (${code}: ${(err as Error).message}); pass the cluster CA (--control-ca) or its fingerprint (--control-fingerprint)`, { cause: err });
}

/** undici `connect` option for a peer: the CA as trust root, or a connector that checks the pin. */
export function connectOptions(trust: PeerTrust, timeoutMs: number, where: string): Agent.Options['connect'] {
  if (trust.fingerprint) {
    const want = normalizeFingerprint(trust.fingerprint);
    // The pin replaces chain and hostname checks; sessions are not resumed, so every connection shows its certificate.
    const base = buildConnector({ rejectUnauthorized: false, timeout: timeoutMs, maxCachedSessions: 0 });
    return (opts, cb) =>
      base(opts, (err, socket) => {
        if (err || !socket) return cb(err ?? new Error('no socket'), null);
        if (opts.protocol !== 'https:') return cb(null, socket);
        const bad = checkPin(socket as TLSSocket, want, where);
        if (bad) {
          socket.destroy();
          return cb(bad, null);
        }
        cb(null, socket);
      });
  }
  return { timeout: timeoutMs, ...(trust.ca ? { ca: trust.ca } : {}) };
}

/** True for a URL whose host is not this machine's loopback (traffic crosses a network). */
export function crossesNetwork(url: string): boolean {
  const h = new URL(url).hostname.replace(/^\[|\]$/g, '');
  return !(h === 'localhost' || h === '::1' || /^127\./.test(h));
}

/** The warning logged when a token travels over plain HTTP across a network. */
export function plainHttpWarning(what: string, url: string): string {
  return `!!! ${what} ${url} is plain HTTP across the network: the cluster token and env values travel in clear. Use TLS (thaw up --tls, see docs/CLI.md) or keep the cluster on a trusted private network.`;
}
