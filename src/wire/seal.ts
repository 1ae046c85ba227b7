// Env in transit to the guest is sealed to the agent's X25519 public key, so the
// bytes that linger in the guest's virtio receive buffers are ciphertext whose
// key dies with the agent process (the agent is respawned before every bake).
// X25519 -> HKDF-SHA256 -> ChaCha20-Poly1305 (IETF): the guest agent opens it
// with libsodium (guest/agent/seal.c); ChaCha20 needs no AES instructions,
// which a TCG guest CPU may lack.
import { createCipheriv, createDecipheriv, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, type KeyObject } from 'node:crypto';
import { SEAL_INFO, type SealedEnv } from './agent.ts';

const SPKI_X25519_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');
const INFO = Buffer.from(SEAL_INFO);
const AEAD = 'chacha20-poly1305';

export function rawPublicKey(key: KeyObject): Buffer {
  return key.export({ format: 'der', type: 'spki' }).subarray(SPKI_X25519_PREFIX.length);
}

function publicKeyFromRaw(raw: Buffer): KeyObject {
  if (raw.length !== 32) throw new Error('X25519 public key must be 32 bytes');
  return createPublicKey({ key: Buffer.concat([SPKI_X25519_PREFIX, raw]), format: 'der', type: 'spki' });
}

function deriveKey(shared: Buffer, epk: Buffer, rpk: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, Buffer.concat([epk, rpk]), INFO, 32));
}

export function generateAgentKey(): { privateKey: KeyObject; publicB64: string } {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  return { privateKey, publicB64: rawPublicKey(publicKey).toString('base64') };
}

/** Seal `env` (a complete environment) to the agent whose raw public key is `agentPublicB64`. */
export function sealEnv(env: Record<string, string>, agentPublicB64: string): SealedEnv {
  const rpk = Buffer.from(agentPublicB64, 'base64');
  const eph = generateKeyPairSync('x25519');
  const epk = rawPublicKey(eph.publicKey);
  const shared = diffieHellman({ privateKey: eph.privateKey, publicKey: publicKeyFromRaw(rpk) });
  const nonce = randomBytes(12);
  const cipher = createCipheriv(AEAD, deriveKey(shared, epk, rpk), nonce, { authTagLength: 16 });
  const ct = Buffer.concat([cipher.update(JSON.stringify(env), 'utf8'), cipher.final()]);
  return { epk: epk.toString('base64'), nonce: nonce.toString('base64'), ct: ct.toString('base64'), tag: cipher.getAuthTag().toString('base64') };
}

/** The agent's side, in TypeScript: used by tests to check what the host seals. */
export function openEnv(sealed: SealedEnv, agent: { privateKey: KeyObject; publicB64: string }): Record<string, string> {
  const epk = Buffer.from(sealed.epk, 'base64');
  const rpk = Buffer.from(agent.publicB64, 'base64');
  const shared = diffieHellman({ privateKey: agent.privateKey, publicKey: publicKeyFromRaw(epk) });
  const decipher = createDecipheriv(AEAD, deriveKey(shared, epk, rpk), Buffer.from(sealed.nonce, 'base64'), { authTagLength: 16 });
  decipher.setAuthTag(Buffer.from(sealed.tag, 'base64'));
  const pt = Buffer.concat([decipher.update(Buffer.from(sealed.ct, 'base64')), decipher.final()]);
  return JSON.parse(pt.toString('utf8')) as Record<string, string>;
}
