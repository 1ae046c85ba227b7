/* Messages of src/wire/agent.ts: one JSON object per line. Requests are
 * checked field by field as the host's zod schemas define them (unknown keys
 * are ignored, as zod does); anything else gets an AGENT_PROTOCOL answer.
 * This file is the fuzz target (fuzz.c): no input may crash it. */
#include "agent.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

const char *const OP_NAMES[OP__COUNT] = {
  "ping", "start_app", "stop_app", "scrub", "respawn", "set_clock",
  "adjust_clock", "reseed", "gate", "logs", "exec", "ps", "mount_volume",
  "unmount_volume",
};

#define FAIL(...) do { snprintf(msg, msgn, __VA_ARGS__); goto bad; } while (0)
/* Largest timeout in ms: the handlers add ms * 1000 to now_mono_us(), which must not overflow. */
#define MAX_MS ((int64_t)1 << 53)

/* zod's .int() takes safe integers only (|x| <= 2^53 - 1). */
#define MAX_SAFE_INT (((int64_t)1 << 53) - 1)

/* JSON numbers that are integers (also 5.0, as JavaScript sees it) within [lo, hi]. */
static int get_int(json_t *o, const char *k, int64_t lo, int64_t hi, int64_t *out) {
  json_t *v = json_object_get(o, k);
  if (hi > MAX_SAFE_INT) hi = MAX_SAFE_INT;
  if (lo < -MAX_SAFE_INT) lo = -MAX_SAFE_INT;
  if (json_is_integer(v)) {
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) return -1;
    *out = x;
    return 0;
  }
  if (json_is_real(v)) {
    double d = json_real_value(v);
    /* (double)INT64_MAX rounds up to 2^63: bound the cast, then compare as integers. */
    if (!isfinite(d) || d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0) return -1;
    int64_t x = (int64_t)d;
    if (x < lo || x > hi) return -1;
    *out = x;
    return 0;
  }
  return -1;
}

/* A string without NUL bytes (C cannot carry them), at most max bytes. */
static const char *get_str(json_t *o, const char *k, size_t max) {
  json_t *v = json_object_get(o, k);
  if (!json_is_string(v)) return NULL;
  size_t n = json_string_length(v);
  const char *s = json_string_value(v);
  if (n > max || strlen(s) != n) return NULL;
  return s;
}

static int is_b64(const char *s) {
  size_t n = strlen(s), pad = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '=') { pad++; continue; }
    if (pad) return 0;
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/')) return 0;
  }
  return pad <= 2;
}

static const char *get_b64(json_t *o, const char *k) {
  const char *s = get_str(o, k, MAX_LINE_BYTES);
  return s && is_b64(s) ? s : NULL;
}

/* /dev/NAME, NAME of [a-z0-9]+ (the schema's /^\/dev\/[a-z0-9]+$/). */
static int is_dev_name(const char *s) {
  if (strncmp(s, "/dev/", 5) || !s[5]) return 0;
  for (s += 5; *s; s++) if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9'))) return 0;
  return 1;
}

/* "/a/b": one or more components, none empty, "." or ".."; no trailing slash. */
static int is_clean_abs_path(const char *s) {
  if (*s != '/') return 0;
  while (*s == '/') {
    const char *c = ++s;
    while (*s && *s != '/') s++;
    size_t n = (size_t)(s - c);
    if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.')) return 0;
  }
  return *s == 0;
}

static int get_argv(json_t *o, struct request *r, size_t max, char *msg, size_t msgn) {
  json_t *a = json_object_get(o, "argv");
  size_t n = json_array_size(a);
  if (!json_is_array(a) || n < 1 || n > max) {
    if (max == SIZE_MAX) snprintf(msg, msgn, "argv must be a non-empty array of strings");
    else snprintf(msg, msgn, "argv must be an array of 1 to %zu strings", max);
    return -1;
  }
  r->argv = zmalloc((n + 1) * sizeof *r->argv);
  if (!r->argv) { snprintf(msg, msgn, "out of memory"); return -1; }
  for (size_t i = 0; i < n; i++) {
    json_t *v = json_array_get(a, i);
    const char *s = json_string_value(v);
    if (!json_is_string(v) || json_string_length(v) == 0 || strlen(s) != json_string_length(v)) {
      snprintf(msg, msgn, "argv[%zu] must be a non-empty string without NUL", i);
      return -1;
    }
    r->argv[i] = s;
  }
  r->argv[n] = NULL;
  r->argc = n;
  return 0;
}

int request_parse(const char *line, size_t len, struct request *r, int64_t *id, char *msg, size_t msgn) {
  memset(r, 0, sizeof *r);
  *id = -1;
  json_error_t jerr;
  /* Numbers as doubles, as JSON.parse reads them; \u0000 is parsed (so the id
   * is known) and refused where a string must reach C (get_str, get_argv). */
  json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &jerr);
  if (!root) { snprintf(msg, msgn, "not JSON: %s", jerr.text); return -1; }
  r->root = root;
  if (!json_is_object(root)) FAIL("a message must be a JSON object");
  int64_t rid;
  if (get_int(root, "id", 0, 2147483647, &rid) < 0) FAIL("id must be an integer from 0 to 2^31-1");
  *id = r->id = rid;
  const char *op = get_str(root, "op", 64);
  if (!op) FAIL("op must be a string");
  int found = -1;
  for (int i = 0; i < OP__COUNT; i++) if (!strcmp(op, OP_NAMES[i])) found = i;
  if (found < 0) FAIL("unknown op \"%.40s\"", op);
  r->op = (enum op)found;
  switch (r->op) {
    case OP_PING: case OP_RESPAWN: case OP_PS:
      break;
    case OP_START_APP: {
      if (get_argv(root, r, MAX_ARGV, msg, msgn) < 0) goto bad;
      r->cwd = get_str(root, "cwd", 4096);
      if (!r->cwd || r->cwd[0] != '/') FAIL("cwd must be an absolute path");
      if (get_int(root, "uid", 0, 2147483647, &r->uid) < 0) FAIL("uid must be an integer from 0 to 2^31-1");
      if (get_int(root, "gid", 0, 2147483647, &r->gid) < 0) FAIL("gid must be an integer from 0 to 2^31-1");
      if (get_int(root, "port", 1, 65535, &r->port) < 0) FAIL("port must be an integer from 1 to 65535");
      if (get_int(root, "listen_timeout_ms", 1, MAX_MS, &r->listen_timeout_ms) < 0) FAIL("listen_timeout_ms must be a positive integer");
      json_t *env = json_object_get(root, "env");
      if (!json_is_object(env)) FAIL("env must be a sealed env object");
      r->env.epk = get_b64(env, "epk");
      r->env.nonce = get_b64(env, "nonce");
      r->env.ct = get_b64(env, "ct");
      r->env.tag = get_b64(env, "tag");
      if (!r->env.epk || !r->env.nonce || !r->env.ct || !r->env.tag) FAIL("env needs base64 strings epk, nonce, ct and tag");
      break;
    }
    case OP_STOP_APP:
      if (get_int(root, "timeout_ms", 1, MAX_MS, &r->timeout_ms) < 0) FAIL("timeout_ms must be a positive integer");
      break;
    case OP_SCRUB:
      if (!(r->b64 = get_b64(root, "canary_b64"))) FAIL("canary_b64 must be a base64 string");
      break;
    case OP_RESEED:
      if (!(r->b64 = get_b64(root, "entropy_b64"))) FAIL("entropy_b64 must be a base64 string");
      break;
    case OP_SET_CLOCK:
      if (get_int(root, "epoch_us", 0, (int64_t)1 << 53, &r->epoch_us) < 0) FAIL("epoch_us must be a non-negative integer");
      break;
    case OP_ADJUST_CLOCK: {
      if (get_int(root, "delta_us", -((int64_t)1 << 53), (int64_t)1 << 53, &r->delta_us) < 0) FAIL("delta_us must be an integer");
      json_t *s = json_object_get(root, "slew");
      if (!json_is_boolean(s)) FAIL("slew must be a boolean");
      r->slew = json_is_true(s);
      break;
    }
    case OP_GATE: {
      json_t *c = json_object_get(root, "canary_sha256");
      if (json_is_null(c)) break;
      const char *s = get_str(root, "canary_sha256", 64);
      int ok = s && strlen(s) == 64;
      for (int i = 0; ok && i < 64; i++) ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f');
      if (!ok) FAIL("canary_sha256 must be 64 lowercase hex digits or null");
      r->canary_sha256 = s;
      break;
    }
    case OP_LOGS:
      if (get_int(root, "max_bytes", 1, INT64_MAX, &r->max_bytes) < 0) FAIL("max_bytes must be a positive integer");
      break;
    case OP_EXEC:
      if (get_argv(root, r, SIZE_MAX, msg, msgn) < 0) goto bad; /* the schema bounds only start_app's argv */
      if (get_int(root, "timeout_ms", 1, MAX_MS, &r->timeout_ms) < 0) FAIL("timeout_ms must be a positive integer");
      break;
    case OP_MOUNT_VOLUME: case OP_UNMOUNT_VOLUME: {
      r->device = get_str(root, "device", 64);
      if (!r->device || !is_dev_name(r->device)) FAIL("device must be /dev/ and a name of lowercase letters and digits");
      r->path = get_str(root, "path", 255);
      if (!r->path || !is_clean_abs_path(r->path)) FAIL("path must be a normalised absolute path other than /");
      break;
    }
    case OP__COUNT:
      FAIL("unknown op");
  }
  return 0;
bad:
  request_free(r);
  return -1;
}

void request_free(struct request *r) {
  zfree((void *)r->argv);
  r->argv = NULL;
  if (r->root) json_decref(r->root);
  r->root = NULL;
}

void send_msg(json_t *msg) {
  char *s = json_dumps(msg, JSON_COMPACT);
  json_decref(msg);
  if (!s) return;
  size_t n = strlen(s);
  chan_write(s, n);
  chan_write("\n", 1);
  zfree(s);
}

void reply_ok(int64_t id, json_t *data) {
  send_msg(json_pack("{s:s, s:I, s:b, s:o}", "type", "result", "id", (json_int_t)id, "ok", 1, "data", data ? data : json_object()));
}

void reply_err(int64_t id, const char *code, const char *fmt, ...) {
  char buf[8192];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
  json_t *err = json_pack("{s:s, s:o}", "code", code, "message", jstr(buf, (size_t)n));
  send_msg(json_pack("{s:s, s:I, s:b, s:o}", "type", "result", "id", (json_int_t)id, "ok", 0, "error", err));
}

static int64_t agent_started_us;
static char boot_id[64];

json_t *hello_json(void) {
  if (!agent_started_us) agent_started_us = now_mono_us();
  if (!boot_id[0]) {
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    if (!f || !fgets(boot_id, sizeof boot_id, f)) snprintf(boot_id, sizeof boot_id, "unknown");
    if (f) fclose(f);
    boot_id[strcspn(boot_id, "\n")] = 0;
  }
  json_t *app = APP.pid > 0 ? json_integer(APP.pid) : json_null();
  return json_pack("{s:i, s:i, s:s, s:s, s:o, s:I, s:I}",
    "version", PROTOCOL_VERSION, "agent_pid", (int)getpid(), "boot_id", boot_id,
    "pubkey", seal_pubkey_b64(), "app_pid", app,
    "uptime_ms", (json_int_t)((now_mono_us() - agent_started_us) / 1000),
    "clock_us", (json_int_t)(now_real_us() + clock_offset_us));
}

void send_hello(void) {
  send_msg(json_pack("{s:s, s:o}", "type", "hello", "hello", hello_json()));
}
