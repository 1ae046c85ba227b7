/* Env sealed by the host (src/wire/seal.ts): X25519 -> HKDF-SHA256 ->
 * ChaCha20-Poly1305 IETF, all from libsodium. Debian 12's libsodium 1.0.18
 * has no HKDF call, so HKDF (RFC 5869) is built from its HMAC-SHA256. Every
 * buffer that held key material or plaintext is zeroed before it is freed. */
#include "agent.h"
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define SEAL_INFO "thaw-env-v2"

static unsigned char sk[crypto_scalarmult_SCALARBYTES];
static unsigned char pk[crypto_scalarmult_BYTES];
static char pk_b64[sodium_base64_ENCODED_LEN(crypto_scalarmult_BYTES, sodium_base64_VARIANT_ORIGINAL)];

void seal_keygen(void) {
  randombytes_buf(sk, sizeof sk);
  crypto_scalarmult_base(pk, sk);
  sodium_bin2base64(pk_b64, sizeof pk_b64, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
}

const char *seal_pubkey_b64(void) { return pk_b64; }

static int b64dec(const char *s, unsigned char *out, size_t cap, size_t *n) {
  return sodium_base642bin(out, cap, s, strlen(s), NULL, n, NULL, sodium_base64_VARIANT_ORIGINAL);
}

/* HKDF-SHA256 with a single output block (32 bytes). */
static void hkdf32(unsigned char okm[32], const unsigned char *salt, size_t saltn, const unsigned char *ikm, size_t ikmn) {
  unsigned char prk[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, salt, saltn);
  crypto_auth_hmacsha256_update(&st, ikm, ikmn);
  crypto_auth_hmacsha256_final(&st, prk);
  const unsigned char one = 1;
  crypto_auth_hmacsha256_init(&st, prk, sizeof prk);
  crypto_auth_hmacsha256_update(&st, (const unsigned char *)SEAL_INFO, strlen(SEAL_INFO));
  crypto_auth_hmacsha256_update(&st, &one, 1);
  crypto_auth_hmacsha256_final(&st, okm);
  sodium_memzero(prk, sizeof prk);
  sodium_memzero(&st, sizeof st);
}

void envp_free(char **envp) {
  if (!envp) return;
  for (char **e = envp; *e; e++) zfree(*e);
  zfree(envp);
}

static int valid_key(const char *k) {
  if (!k[0]) return 0;
  for (const char *c = k; *c; c++) if (*c == '=') return 0;
  return 1;
}

int seal_open_env(const struct sealed *s, char ***envp_out, char *err, size_t errn) {
  unsigned char epk[32], nonce[12], tag[16], shared[32], key[32], salt[64];
  json_error_t jerr;
  size_t n;
  int rc = -1;
  unsigned char *ct = NULL, *pt = NULL;
  size_t ctn = 0, ctcap = strlen(s->ct) / 4 * 3 + 3;
  json_t *obj = NULL;
  char **envp = NULL;
  *envp_out = NULL;
  if (b64dec(s->epk, epk, sizeof epk, &n) || n != 32) { snprintf(err, errn, "env.epk must be 32 bytes"); goto out; }
  if (b64dec(s->nonce, nonce, sizeof nonce, &n) || n != 12) { snprintf(err, errn, "env.nonce must be 12 bytes"); goto out; }
  if (b64dec(s->tag, tag, sizeof tag, &n) || n != 16) { snprintf(err, errn, "env.tag must be 16 bytes"); goto out; }
  ct = zmalloc(ctcap);
  pt = zmalloc(ctcap + 1);
  if (!ct || !pt) { snprintf(err, errn, "out of memory"); goto out; }
  if (b64dec(s->ct, ct, ctcap, &ctn)) { snprintf(err, errn, "env.ct is not base64"); goto out; }
  if (crypto_scalarmult(shared, sk, epk) != 0) { snprintf(err, errn, "env.epk is a low-order point"); goto out; }
  memcpy(salt, epk, 32);
  memcpy(salt + 32, pk, 32);
  hkdf32(key, salt, sizeof salt, shared, sizeof shared);
  if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(pt, NULL, ct, ctn, tag, NULL, 0, nonce, key) != 0) {
    snprintf(err, errn, "env does not open with this agent's key (sealed to another agent, or tampered with)");
    goto out;
  }
  pt[ctn] = 0;
  obj = json_loadb((const char *)pt, ctn, JSON_REJECT_DUPLICATES, &jerr);
  if (!json_is_object(obj)) { snprintf(err, errn, "sealed env is not a JSON object"); goto out; }
  size_t count = json_object_size(obj), i = 0;
  envp = zmalloc((count + 1) * sizeof *envp);
  if (!envp) { snprintf(err, errn, "out of memory"); goto out; }
  memset(envp, 0, (count + 1) * sizeof *envp);
  const char *k;
  json_t *v;
  json_object_foreach(obj, k, v) {
    const char *val = json_string_value(v);
    if (!json_is_string(v) || strlen(val) != json_string_length(v) || !valid_key(k)) {
      snprintf(err, errn, "env entries must be NAME=string without NUL or '=' in the name");
      goto out;
    }
    size_t kl = strlen(k), vl = strlen(val);
    char *e = zmalloc(kl + vl + 2);
    if (!e) { snprintf(err, errn, "out of memory"); goto out; }
    memcpy(e, k, kl);
    e[kl] = '=';
    memcpy(e + kl + 1, val, vl + 1);
    envp[i++] = e;
  }
  *envp_out = envp;
  envp = NULL;
  rc = 0;
out:
  sodium_memzero(&jerr, sizeof jerr); /* a parse error quotes the plaintext */
  sodium_memzero(shared, sizeof shared);
  sodium_memzero(key, sizeof key);
  if (ct) zfree(ct);
  if (pt) zfree(pt);
  if (obj) json_decref(obj); /* jansson allocates through zmalloc/zfree: zeroed */
  envp_free(envp);
  return rc;
}
