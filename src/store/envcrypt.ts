// Env values at rest: AES-256-GCM, random 96-bit IV, the (app, key) pair as
// associated data so a ciphertext cannot be moved to another row.
// Stored as base64(iv | tag | ciphertext).
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { ThawError } from '../errors.ts';

const IV = 12;
const TAG = 16;

export const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
export const ENV_VALUE_MAX = 32 * 1024;
export const ENV_TOTAL_MAX = 256 * 1024;

export function checkEnvKey(envKey: Buffer): void {
  if (!Buffer.isBuffer(envKey) || envKey.length !== 32) {
    throw new ThawError('INTERNAL', 'the env encryption key must be 32 bytes');
  }
}

const aad = (app: string, key: string): Buffer => Buffer.from(`${app}\0${key}`, 'utf8');

export function encryptValue(envKey: Buffer, app: string, key: string, value: string): string {
  const iv = randomBytes(IV);
  const c = createCipheriv('aes-256-gcm', envKey, iv);
  c.setAAD(aad(app, key));
  const ct = Buffer.concat([c.update(value, 'utf8'), c.final()]);
  return Buffer.concat([iv, c.getAuthTag(), ct]).toString('base64');
}

export function decryptValue(envKey: Buffer, app: string, key: string, stored: string): string {
  try {
    const buf = Buffer.from(stored, 'base64');
    const d = createDecipheriv('aes-256-gcm', envKey, buf.subarray(0, IV));
    d.setAAD(aad(app, key));
    d.setAuthTag(buf.subarray(IV, IV + TAG));
    return Buffer.concat([d.update(buf.subarray(IV + TAG)), d.final()]).toString('utf8');
  } catch (err) {
    throw new ThawError('STORE_ERROR', `cannot decrypt env ${key} of app ${app} (wrong key or corrupt row)`, { cause: err });
  }
}

/** Validates keys and sizes of the env an app would have after a change. */
export function checkEnvVars(vars: Record<string, string>): void {
  let total = 0;
  for (const [k, v] of Object.entries(vars)) {
    if (!ENV_KEY_RE.test(k)) throw new ThawError('INVALID_ENV_KEY', `invalid env key: ${JSON.stringify(k.slice(0, 140))}`);
    if (typeof v !== 'string') throw new ThawError('INVALID_REQUEST', `env value of ${k} must be a string`);
    if (v.includes('\0')) throw new ThawError('INVALID_REQUEST', `env value of ${k} contains a NUL byte, which no process environment can hold`);
    const n = Buffer.byteLength(v, 'utf8');
    if (n > ENV_VALUE_MAX) throw new ThawError('ENV_VALUE_TOO_LARGE', `env ${k} is ${n} bytes (limit ${ENV_VALUE_MAX})`);
    total += n;
  }
  if (total > ENV_TOTAL_MAX) throw new ThawError('ENV_VALUE_TOO_LARGE', `env is ${total} bytes in total (limit ${ENV_TOTAL_MAX})`);
}
