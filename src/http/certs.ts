// Certificates for TLS between the control plane and its nodes, made with the
// `openssl` CLI (Node's crypto cannot write X.509): a self-signed cluster CA
// (EC P-256, 10 years) and server certificates it signs (or self-signed ones,
// for a node that pins its own), with the addresses they are reached at as
// subjectAltNames. Keys are written 0600; existing files are kept.
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ThawError } from '../errors.ts';

const run = promisify(execFile);

/** A certificate and its private key, as PEM file paths. */
export interface CertFiles {
  cert: string;
  key: string;
}

async function openssl(args: string[], config: string): Promise<void> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'thaw-openssl-'));
  try {
    await writeFile(path.join(tmp, 'req.cnf'), config);
    await run('openssl', [...args, '-config', path.join(tmp, 'req.cnf'), '-extensions', 'ext'], { timeout: 30_000 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new ThawError('HOST_MISSING_TOOL', 'openssl is not installed (apt-get install openssl)', { cause: err });
    throw new ThawError('TLS_CONFIG_INVALID', `openssl failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

const reqConfig = (cn: string, ext: string[]) =>
  ['[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', `CN = ${cn.replace(/[^\w .-]/g, '')}`, '[ext]', ...ext, ''].join('\n');

/** Writes cert+key atomically (both or neither) through openssl `req -x509`. */
async function makeCert(out: CertFiles, args: string[], config: string): Promise<void> {
  await mkdir(path.dirname(out.cert), { recursive: true, mode: 0o700 });
  const tmp = { cert: `${out.cert}.tmp-${process.pid}`, key: `${out.key}.tmp-${process.pid}` };
  try {
    await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', tmp.key, '-out', tmp.cert, ...args], config);
    await chmod(tmp.key, 0o600);
    await rename(tmp.key, out.key);
    await rename(tmp.cert, out.cert);
  } finally {
    await rm(tmp.cert, { force: true });
    await rm(tmp.key, { force: true });
  }
}

/** The cluster CA in `dir` (ca.crt, ca.key), created on first use. */
export async function ensureClusterCa(dir: string): Promise<CertFiles> {
  const ca = { cert: path.join(dir, 'ca.crt'), key: path.join(dir, 'ca.key') };
  if (existsSync(ca.cert) && existsSync(ca.key)) return ca;
  await makeCert(ca, ['-days', '3650'], reqConfig('thaw cluster CA', ['basicConstraints = critical,CA:TRUE', 'keyUsage = critical,keyCertSign,cRLSign', 'subjectKeyIdentifier = hash']));
  return ca;
}

/**
 * A server certificate for `names` (IP addresses and DNS names), signed by `ca`
 * or self-signed without one; 825 days. Re-issued when an existing one lacks a
 * name, was signed by another CA or expires within 30 days.
 */
export async function ensureServerCert(out: CertFiles, o: { cn: string; names: string[]; ca?: CertFiles }): Promise<CertFiles> {
  const names = [...new Set(o.names.filter((n) => n && n !== '0.0.0.0' && n !== '::'))];
  if (await certFits(out, names, o.ca)) return out;
  const san = names.map((n) => (net.isIP(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
  const ext = ['basicConstraints = critical,CA:FALSE', 'keyUsage = critical,digitalSignature', 'extendedKeyUsage = serverAuth', ...(san ? [`subjectAltName = ${san}`] : [])];
  await makeCert(out, ['-days', '825', ...(o.ca ? ['-CA', o.ca.cert, '-CAkey', o.ca.key] : [])], reqConfig(o.cn, ext));
  return out;
}

async function certFits(out: CertFiles, names: string[], ca?: CertFiles): Promise<boolean> {
  if (!existsSync(out.cert) || !existsSync(out.key)) return false;
  try {
    const cert = new X509Certificate(await readFile(out.cert));
    if (Date.parse(cert.validTo) - Date.now() < 30 * 24 * 3600_000) return false;
    if (ca && !cert.verify(new X509Certificate(await readFile(ca.cert)).publicKey)) return false;
    return names.every((n) => (net.isIP(n) ? cert.checkIP(n) : cert.checkHost(n)) !== undefined);
  } catch {
    return false;
  }
}

/** Addresses and names this host is reached at: its hostname, localhost and every interface address. */
export function hostNames(): string[] {
  const addrs = Object.values(os.networkInterfaces()).flatMap((l) => (l ?? []).map((a) => a.address.replace(/%.*$/, '')));
  return ['localhost', os.hostname(), ...addrs];
}
