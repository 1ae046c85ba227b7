/* libFuzzer target for the agent's message parser (protocol.c) and for the
 * pure part of what the handlers do with a parsed request (seal.c's env
 * opening, base64 decoding, deadline and clock arithmetic, replies). Built
 * and run by fuzz.sh; never part of the agent (build.sh lists its files).
 *
 * The input is what the channel delivers: it is split into lines at '\n' and
 * each line goes through the steps of loop.c's on_line(): trailing '\r' and
 * ' ' trimmed, empty lines skipped, request_parse(), then an AGENT_PROTOCOL
 * reply on failure or the handler's pure work on success. Nothing here forks,
 * kills, writes files or touches the clock.
 *
 * Besides the sanitizers, the harness checks properties:
 * - a parsed request satisfies the documented field ranges (agent.h, src/wire/agent.ts);
 * - every reply is one line of JSON with the request's id;
 * - seal_open_env() opens exactly the envs that open with the agent's key
 *   (checked here independently) and hold a JSON object of NUL-free strings
 *   under non-empty names without '=' or NUL, and returns exactly those
 *   entries. A mutated sealed env never gets past the AEAD, so to reach the
 *   plaintext parser the harness also seals the base64-decoded env.ct of a
 *   start_app to the agent's key (as src/wire/seal.ts does) and checks that.
 *
 * The agent's key comes from a fixed-seed randombytes implementation (the
 * same key in every run: THAW_FUZZ_PRINT_PUBKEY=1 prints it), so a start_app
 * seed in corpus/ can carry an env sealed to it that really opens. */
#include "agent.h"
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- inert stubs for symbols of files that are not linked (loop.c, ops.c, app.c) ---- */
struct agent_cfg CFG = { .channel_fd = -1, .root = "" };
struct app_state APP = { .pid = 0, .out_fd = -1, .start_id = -1, .stop_id = -1 };
int64_t clock_offset_us;

/* The channel: replies are collected here (not sent anywhere) and checked. */
static char out[1 << 16];
static size_t out_len;
static int out_truncated;
void chan_write(const char *buf, size_t n) {
  if (n > sizeof out - out_len) { out_truncated = 1; return; }
  memcpy(out + out_len, buf, n);
  out_len += n;
}

#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "fuzz.c:%d: check failed: %s\n", __LINE__, #cond); abort(); } } while (0)

/* ---- a deterministic randombytes (fixed seed): the agent's key is the same in every run ---- */
static const unsigned char rng_seed[randombytes_SEEDBYTES] = "thaw guest agent fuzz, fixed rng";
static uint64_t rng_calls;
static unsigned char agent_sk[32], agent_pk[32];
static int keygen; /* inside seal_keygen(): what rng_buf hands out is the agent's secret key */
static const char *rng_name(void) { return "thaw-fuzz-fixed"; }
static void rng_buf(void *const buf, const size_t size) {
  unsigned char seed[randombytes_SEEDBYTES];
  memcpy(seed, rng_seed, sizeof seed);
  uint64_t c = rng_calls++;
  for (int i = 0; i < 8; i++) seed[i] ^= (unsigned char)(c >> (8 * i));
  randombytes_buf_deterministic(buf, size, seed);
  if (keygen) { if (size != sizeof agent_sk) abort(); memcpy(agent_sk, buf, size); keygen++; }
}
static uint32_t rng_random(void) { uint32_t x; rng_buf(&x, sizeof x); return x; }
static randombytes_implementation rng_fixed = { .implementation_name = rng_name, .random = rng_random, .buf = rng_buf };

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  randombytes_set_implementation(&rng_fixed);
  if (sodium_init() < 0) abort();
  json_set_alloc_funcs(zmalloc, zfree);
  json_object_seed(1); /* jansson's hash order: the same in every run */
  keygen = 1;
  seal_keygen();
  if (keygen != 2) abort();
  keygen = 0;
  size_t n;
  unsigned char pk2[32];
  const char *pk = seal_pubkey_b64();
  if (sodium_base642bin(agent_pk, sizeof agent_pk, pk, strlen(pk), NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL) || n != 32) abort();
  if (crypto_scalarmult_base(pk2, agent_sk) || memcmp(pk2, agent_pk, 32)) abort();
  if (getenv("THAW_FUZZ_PRINT_PUBKEY")) fprintf(stderr, "agent pubkey: %s\n", pk);
  return 0;
}

/* ---- replies ---- */
static void reply_begin(void) { out_len = 0; out_truncated = 0; }

/* Exactly one line of JSON was written: {"type":"result","id":id,"ok":ok,...}. */
static void reply_check(int64_t id, int ok) {
  CHECK(!out_truncated);
  CHECK(out_len > 0 && out[out_len - 1] == '\n');
  CHECK(memchr(out, '\n', out_len) == out + out_len - 1);
  json_error_t e;
  json_t *m = json_loadb(out, out_len - 1, JSON_REJECT_DUPLICATES, &e);
  CHECK(json_is_object(m));
  CHECK(json_is_string(json_object_get(m, "type")) && !strcmp(json_string_value(json_object_get(m, "type")), "result"));
  CHECK(json_is_integer(json_object_get(m, "id")) && json_integer_value(json_object_get(m, "id")) == id);
  CHECK(json_is_boolean(json_object_get(m, "ok")) && json_is_true(json_object_get(m, "ok")) == ok);
  if (!ok) {
    json_t *err = json_object_get(m, "error");
    CHECK(json_is_string(json_object_get(err, "code")) && json_is_string(json_object_get(err, "message")));
  } else {
    CHECK(json_is_object(json_object_get(m, "data")));
  }
  json_decref(m);
}

/* ---- sealing and opening, independently of seal.c (as src/wire/seal.ts does) ---- */
static void hkdf32(unsigned char okm[32], const unsigned char *salt, size_t saltn, const unsigned char *ikm, size_t ikmn) {
  static const char info[] = "thaw-env-v2";
  unsigned char prk[32];
  const unsigned char one = 1;
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, salt, saltn);
  crypto_auth_hmacsha256_update(&st, ikm, ikmn);
  crypto_auth_hmacsha256_final(&st, prk);
  crypto_auth_hmacsha256_init(&st, prk, sizeof prk);
  crypto_auth_hmacsha256_update(&st, (const unsigned char *)info, sizeof info - 1);
  crypto_auth_hmacsha256_update(&st, &one, 1);
  crypto_auth_hmacsha256_final(&st, okm);
}

static char *b64(const unsigned char *b, size_t n) {
  size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
  char *s = malloc(cap);
  CHECK(s);
  sodium_bin2base64(s, cap, b, n, sodium_base64_VARIANT_ORIGINAL);
  return s;
}

/* Is obj (the parsed plaintext, NULL if not JSON) an env seal_open_env() must accept? */
static int env_acceptable(json_t *obj) {
  if (!json_is_object(obj)) return 0;
  const char *k;
  size_t kl;
  json_t *v;
  json_object_keylen_foreach(obj, k, kl, v) {
    if (kl == 0 || memchr(k, '=', kl) || memchr(k, 0, kl)) return 0;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) return 0;
  }
  return 1;
}

/* What seal_open_env() returned matches the plaintext it opened. */
static void check_envp(char **envp, json_t *obj) {
  size_t n = 0;
  for (char **e = envp; *e; e++, n++) {
    const char *eq = strchr(*e, '=');
    CHECK(eq && eq != *e);
    json_t *v = json_object_getn(obj, *e, (size_t)(eq - *e));
    CHECK(json_is_string(v) && !strcmp(json_string_value(v), eq + 1));
  }
  CHECK(n == json_object_size(obj));
}

/* The plaintext of s if it opens with the agent's key (the host-side view of
 * what seal.c does), else NULL. */
static unsigned char *open_like_agent(const struct sealed *s, size_t *ptn) {
  unsigned char epk[32], nonce[12], tag[16], shared[32], key[32], salt[64];
  size_t n, ctcap = strlen(s->ct) / 4 * 3 + 3, ctn;
  const int V = sodium_base64_VARIANT_ORIGINAL;
  if (sodium_base642bin(epk, 32, s->epk, strlen(s->epk), NULL, &n, NULL, V) || n != 32) return NULL;
  if (sodium_base642bin(nonce, 12, s->nonce, strlen(s->nonce), NULL, &n, NULL, V) || n != 12) return NULL;
  if (sodium_base642bin(tag, 16, s->tag, strlen(s->tag), NULL, &n, NULL, V) || n != 16) return NULL;
  unsigned char *ct = malloc(ctcap), *pt = malloc(ctcap + 1);
  CHECK(ct && pt);
  int ok = sodium_base642bin(ct, ctcap, s->ct, strlen(s->ct), NULL, &ctn, NULL, V) == 0 && crypto_scalarmult(shared, agent_sk, epk) == 0;
  if (ok) {
    memcpy(salt, epk, 32);
    memcpy(salt + 32, agent_pk, 32);
    hkdf32(key, salt, sizeof salt, shared, sizeof shared);
    ok = crypto_aead_chacha20poly1305_ietf_decrypt_detached(pt, NULL, ct, ctn, tag, NULL, 0, nonce, key) == 0;
  }
  free(ct);
  if (!ok) { free(pt); return NULL; }
  *ptn = ctn;
  return pt;
}

/* seal_open_env(s) opens exactly the envs that open with the agent's key and
 * hold an acceptable plaintext, and returns exactly the entries of it. */
static void check_open(int64_t id, const struct sealed *s) {
  size_t ptn = 0;
  unsigned char *pt = open_like_agent(s, &ptn);
  json_error_t e;
  json_t *obj = pt ? json_loadb((const char *)pt, ptn, JSON_REJECT_DUPLICATES, &e) : NULL;
  int want = env_acceptable(obj);
  char **envp = (char **)&envp, err[512] = "";
  int rc = seal_open_env(s, &envp, err, sizeof err);
  CHECK(rc == 0 || rc == -1);
  if (rc == 0) {
    CHECK(envp);
    if (want) check_envp(envp, obj);
    envp_free(envp);
  } else {
    CHECK(envp == NULL && err[0]);
    reply_begin();
    reply_err(id, "AGENT_PROTOCOL", "%s", err); /* as handle_request answers */
    reply_check(id, 0);
  }
  if (rc != (want ? 0 : -1)) {
    fprintf(stderr, "seal_open_env returned %d for an env it should %s (%s)\n", rc, want ? "accept" : "refuse", err);
    abort();
  }
  json_decref(obj);
  free(pt);
}

/* Seal pt (n bytes) to the agent, as the host does, and check how it opens. */
static void seal_and_check(int64_t id, const unsigned char *pt, size_t n) {
  static const unsigned char esk[32] = "ephemeral key of the fuzz host.";
  static const unsigned char nonce[12] = "fuzz nonce.";
  unsigned char epk[32], shared[32], key[32], salt[64], tag[16];
  crypto_scalarmult_base(epk, esk);
  if (crypto_scalarmult(shared, esk, agent_pk) != 0) abort();
  memcpy(salt, epk, 32);
  memcpy(salt + 32, agent_pk, 32);
  hkdf32(key, salt, sizeof salt, shared, sizeof shared);
  unsigned char *ct = malloc(n + 1);
  CHECK(ct);
  crypto_aead_chacha20poly1305_ietf_encrypt_detached(ct, tag, NULL, pt, n, NULL, 0, NULL, nonce, key);
  struct sealed s = { .epk = b64(epk, 32), .nonce = b64(nonce, 12), .ct = b64(ct, n), .tag = b64(tag, 16) };
  free(ct);
  check_open(id, &s);
  free((void *)s.epk); free((void *)s.nonce); free((void *)s.ct); free((void *)s.tag);
}

/* ---- a parsed request is what agent.h says it is ---- */
static int str_ok(const char *s, size_t max) { return s && strlen(s) <= max; }

static int b64_ok(const char *s) {
  if (!s) return 0;
  size_t n = strlen(s), i = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
  return strspn(s + i, "=") == n - i && n - i <= 2;
}

static void check_request(const struct request *r) {
  CHECK(r->root);
  CHECK(r->id >= 0 && r->id <= 2147483647);
  CHECK((unsigned)r->op < OP__COUNT);
  switch (r->op) {
    case OP_START_APP:
      CHECK(r->argc >= 1 && r->argc <= MAX_ARGV && r->argv && !r->argv[r->argc]);
      for (size_t i = 0; i < r->argc; i++) CHECK(r->argv[i] && r->argv[i][0]);
      CHECK(str_ok(r->cwd, 4096) && r->cwd[0] == '/');
      CHECK(r->uid >= 0 && r->uid <= 2147483647 && r->gid >= 0 && r->gid <= 2147483647);
      CHECK(r->port >= 1 && r->port <= 65535);
      CHECK(r->listen_timeout_ms >= 1 && r->listen_timeout_ms <= (int64_t)1 << 53);
      CHECK(b64_ok(r->env.epk) && b64_ok(r->env.nonce) && b64_ok(r->env.ct) && b64_ok(r->env.tag));
      break;
    case OP_EXEC: /* argv: no upper bound (the schema bounds only start_app's) */
      CHECK(r->argc >= 1 && r->argv && !r->argv[r->argc]);
      for (size_t i = 0; i < r->argc; i++) CHECK(r->argv[i] && r->argv[i][0]);
      /* fall through */
    case OP_STOP_APP:
      CHECK(r->timeout_ms >= 1 && r->timeout_ms <= (int64_t)1 << 53);
      break;
    case OP_SCRUB: case OP_RESEED:
      CHECK(b64_ok(r->b64));
      break;
    case OP_SET_CLOCK:
      CHECK(r->epoch_us >= 0 && r->epoch_us <= (int64_t)1 << 53);
      break;
    case OP_ADJUST_CLOCK:
      CHECK(r->delta_us >= -((int64_t)1 << 53) && r->delta_us <= (int64_t)1 << 53);
      CHECK(r->slew == 0 || r->slew == 1);
      break;
    case OP_GATE:
      if (r->canary_sha256) {
        CHECK(strlen(r->canary_sha256) == 64);
        CHECK(strspn(r->canary_sha256, "0123456789abcdef") == 64);
      }
      break;
    case OP_LOGS:
      CHECK(r->max_bytes >= 1);
      break;
    default:
      break;
  }
  if (r->op != OP_START_APP && r->op != OP_EXEC) CHECK(!r->argv);
}

/* ---- what the handlers (ops.c, app.c) do with the fields, minus every side effect ---- */
static void handle_pure(struct request *r) {
  switch (r->op) {
    case OP_PING:
      reply_begin();
      reply_ok(r->id, hello_json());
      reply_check(r->id, 1);
      break;
    case OP_START_APP: {
      check_open(r->id, &r->env);
      volatile int64_t listen_deadline_us = now_mono_us() + r->listen_timeout_ms * 1000; /* app_start */
      (void)listen_deadline_us;
      /* The plaintext parser, behind the AEAD: seal the decoded ct to this agent and open it. */
      size_t cap = strlen(r->env.ct) / 4 * 3 + 3, n;
      unsigned char *pt = malloc(cap);
      CHECK(pt);
      if (sodium_base642bin(pt, cap, r->env.ct, strlen(r->env.ct), NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL) == 0)
        seal_and_check(r->id, pt, n);
      free(pt);
      break;
    }
    case OP_STOP_APP: case OP_EXEC: {
      volatile int64_t deadline_us = now_mono_us() + r->timeout_ms * 1000; /* app_stop, exec_start */
      (void)deadline_us;
      break;
    }
    case OP_SCRUB: case OP_RESEED: { /* do_scrub, OP_RESEED: decode into the handler's buffer */
      size_t cap = r->op == OP_SCRUB ? 65536 : 4096, n = 0;
      unsigned char *buf = malloc(cap);
      CHECK(buf);
      if (sodium_base642bin(buf, cap, r->b64, strlen(r->b64), NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL) == 0) CHECK(n <= cap);
      free(buf);
      break;
    }
    case OP_RESPAWN:
      reply_begin();
      reply_ok(r->id, json_pack("{s:b}", "ok", 1));
      reply_check(r->id, 1);
      break;
    case OP_SET_CLOCK: { /* set_real_us */
      volatile int64_t off = r->epoch_us - now_real_us();
      struct timespec t = { .tv_sec = r->epoch_us / 1000000, .tv_nsec = (r->epoch_us % 1000000) * 1000 };
      (void)off;
      CHECK(t.tv_sec >= 0 && t.tv_nsec >= 0 && t.tv_nsec < 1000000000);
      break;
    }
    case OP_ADJUST_CLOCK: { /* do_adjust, with a clock offset of 0 */
      int64_t d = r->delta_us;
      if (r->slew && d >= -100000 && d <= 100000) {
        int64_t sec = d / 1000000, usec = d % 1000000;
        if (usec < 0) { sec -= 1; usec += 1000000; }
        CHECK(usec >= 0 && usec < 1000000 && sec >= -1 && sec <= 0);
      } else {
        volatile int64_t target = now_real_us() + clock_offset_us + d;
        (void)target;
      }
      break;
    }
    case OP_LOGS: { /* OP_LOGS with an empty ring */
      size_t max = r->max_bytes < LOG_RING_BYTES ? (size_t)r->max_bytes : LOG_RING_BYTES;
      char *buf = zmalloc(max + 1);
      CHECK(buf);
      reply_begin();
      reply_ok(r->id, json_pack("{s:o}", "text", jstr(buf, 0)));
      reply_check(r->id, 1);
      zfree(buf);
      break;
    }
    case OP_GATE: case OP_PS: case OP__COUNT:
      break;
  }
}

/* loop.c's on_line(), with the handler replaced by handle_pure(). */
static void on_line(const char *line, size_t len) {
  while (len && (line[len - 1] == '\r' || line[len - 1] == ' ')) len--;
  if (len == 0) return;
  char *copy = malloc(len); /* exactly len bytes, no terminator: a read past the line is caught */
  CHECK(copy);
  memcpy(copy, line, len);
  struct request r;
  int64_t id = -2;
  char msg[512];
  msg[0] = 0;
  if (request_parse(copy, len, &r, &id, msg, sizeof msg) < 0) {
    CHECK(id >= -1 && id <= 2147483647);
    CHECK(msg[0] && strlen(msg) < sizeof msg);
    CHECK(r.root == NULL && r.argv == NULL);
    reply_begin();
    reply_err(id, "AGENT_PROTOCOL", "%s", msg);
    reply_check(id, 0);
  } else {
    CHECK(id == r.id);
    check_request(&r);
    handle_pure(&r);
    request_free(&r);
    CHECK(r.root == NULL && r.argv == NULL);
  }
  free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  size_t from = 0;
  for (size_t i = 0; i < size; i++) {
    if (s[i] != '\n') continue;
    on_line(s + from, i - from);
    from = i + 1;
  }
  if (from < size) on_line(s + from, size - from); /* the last line, its newline still to come */
  return 0;
}
