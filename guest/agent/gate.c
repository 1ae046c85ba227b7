/* The liveness gate, run right after a thaw and before any request is routed.
 * A plain write/fsync/read round trip can pass on a mismatched disk (the page
 * cache in the memory image answers), so the gate also reads back the canary
 * written at bake time with O_DIRECT, straight from the attached disk, and
 * compares its SHA-256 with the manifest's; and it scans the kernel log for
 * filesystem errors logged since the agent started (after the bake's scrub). */
#include "agent.h"
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK 4096
#define CANARY_MAX 65536 /* scrub takes canaries of 1 to 64 KiB */
#define CANARY "/var/lib/thaw/canary"
#define PROBE "/var/lib/thaw/gate.probe"
#define GATE_FAILED_MARK "/run/thaw-gate-failed"

int gate_failed;
char gate_reason[512];

static int kfd = -1;
static regex_t fs_re;
static int re_ok;

/* A gate that failed in an earlier agent of this boot still counts. */
void gate_load_failure(void) {
  char p[4096];
  int fd = open(path_in_root(GATE_FAILED_MARK, p, sizeof p), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, gate_reason, sizeof gate_reason - 1);
  close(fd);
  gate_reason[n > 0 ? n : 0] = 0;
  gate_failed = 1;
}

void kmsg_open(void) {
  if (!re_ok) {
    re_ok = regcomp(&fs_re, "EXT4-fs error|EXT4-fs warning|I/O error|Buffer I/O error|failed checksum|JBD2: .*(error|abort)|EXT4-fs .*(corrupt|abort)|blk_update_request",
                    REG_EXTENDED | REG_ICASE | REG_NOSUB) == 0;
  }
  if (!CFG.kmsg) return;
  kfd = open(CFG.kmsg, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (kfd >= 0) lseek(kfd, 0, SEEK_END); /* only records logged from now on */
}

/* Records are "prio,seq,ts,flags;text\n" (continuation lines start with a space). */
int kmsg_fs_errors(json_t *out, char *first, size_t firstn) {
  if (kfd < 0) return 0;
  static char buf[8192 + 1];
  static size_t have;
  int count = 0;
  for (;;) {
    ssize_t n = read(kfd, buf + have, sizeof buf - 1 - have);
    if (n < 0 && errno == EPIPE) continue; /* records overwritten: keep reading */
    if (n <= 0) break;
    have += (size_t)n;
    buf[have] = 0;
    char *line = buf, *nl;
    while ((nl = memchr(line, '\n', have - (size_t)(line - buf)))) {
      *nl = 0;
      char *semi = line[0] == ' ' ? NULL : strchr(line, ';');
      if (semi && re_ok && regexec(&fs_re, semi + 1, 0, NULL, 0) == 0) {
        if (count == 0 && first) snprintf(first, firstn, "%s", semi + 1);
        if (out && json_array_size(out) < 20) json_array_append_new(out, jstr(semi + 1, strlen(semi + 1)));
        count++;
      }
      line = nl + 1;
    }
    size_t rest = have - (size_t)(line - buf);
    if (rest == sizeof buf - 1) rest = 0; /* an overlong record: drop it */
    memmove(buf, line, rest);
    have = rest;
  }
  return count;
}

static unsigned char *aligned_block(void) {
  static unsigned char *b;
  if (!b && posix_memalign((void **)&b, BLOCK, BLOCK) != 0) b = NULL;
  return b;
}

static ssize_t direct_read(const char *path, unsigned char *b) {
  int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = pread(fd, b, BLOCK, 0);
  close(fd);
  return n;
}

/* The whole canary, read with O_DIRECT (one block more than the largest canary:
 * a longer file is not the canary). */
static int canary_check(const char *expected) {
  char p[4096];
  static unsigned char *b;
  if (!b && posix_memalign((void **)&b, BLOCK, CANARY_MAX + BLOCK) != 0) b = NULL;
  if (!b) return 0;
  int fd = open(path_in_root(CANARY, p, sizeof p), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = 0, r = 0;
  while (n < CANARY_MAX + BLOCK) { /* short reads only at the end of the file */
    r = pread(fd, b + n, (size_t)(CANARY_MAX + BLOCK - n), n);
    if (r <= 0) break;
    n += r;
    if (n % BLOCK) break;
  }
  close(fd);
  if (r < 0 || n > CANARY_MAX) return 0;
  unsigned char h[crypto_hash_sha256_BYTES];
  char hex[crypto_hash_sha256_BYTES * 2 + 1];
  crypto_hash_sha256(h, b, (unsigned long long)n);
  sodium_bin2hex(hex, sizeof hex, h, sizeof h);
  return strcmp(hex, expected) == 0;
}

/* Create the probe file, one block, with its data on disk (scrub does this
 * before a bake, so a thaw's round trip rewrites an allocated block). */
static int make_probe(const char *probe) {
  unsigned char b[BLOCK];
  int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  randombytes_buf(b, BLOCK);
  int ok = write(fd, b, BLOCK) == BLOCK && fsync(fd) == 0;
  close(fd);
  return ok ? 0 : -1;
}

int prepare_probe(void) {
  char p[4096];
  return make_probe(path_in_root(PROBE, p, sizeof p));
}

/* Write fresh random bytes over the probe's block with O_DIRECT|O_DSYNC (to the
 * device and flushed, no page cache), then read them back with O_DIRECT. The
 * block is already allocated, so no journal commit is needed on the way. */
static int round_trip(void) {
  char p[4096];
  const char *probe = path_in_root(PROBE, p, sizeof p);
  unsigned char *b = aligned_block();
  unsigned char fresh[BLOCK];
  if (!b) return 0;
  int fd = open(probe, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT && make_probe(probe) == 0) fd = open(probe, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
  if (fd < 0) return 0;
  randombytes_buf(fresh, BLOCK);
  memcpy(b, fresh, BLOCK);
  int ok = pwrite(fd, b, BLOCK, 0) == BLOCK;
  close(fd);
  if (!ok) return 0;
  memset(b, 0, BLOCK);
  return direct_read(probe, b) == BLOCK && memcmp(b, fresh, BLOCK) == 0;
}

json_t *gate_run(const char *canary_sha256, int *ok) {
  int64_t t0 = now_mono_us();
  int canary = canary_sha256 ? canary_check(canary_sha256) : -1;
  int rt = round_trip();
  json_t *errs = json_array();
  char first[256] = "";
  /* Scan the log after the disk was touched, so errors the reads caused are in it. */
  int nerr = kmsg_fs_errors(errs, first, sizeof first);
  char reason[512] = "";
  size_t used = 0;
#define ADD(...) used += (size_t)snprintf(reason + used, used < sizeof reason ? sizeof reason - used : 0, __VA_ARGS__)
  if (canary == 0) ADD("%scanary written at bake time does not read back from the attached disk", used ? "; " : "");
  if (!rt) ADD("%swrite/fsync/direct-read round trip failed", used ? "; " : "");
  if (nerr > 0) ADD("%skernel log has %d filesystem error(s): %s", used ? "; " : "", nerr, first);
#undef ADD
  *ok = reason[0] == 0;
  if (!*ok) {
    gate_failed = 1;
    snprintf(gate_reason, sizeof gate_reason, "%s", reason);
    /* Remembered on tmpfs, so a respawned agent refuses start_app too. */
    char p[4096];
    int fd = open(path_in_root(GATE_FAILED_MARK, p, sizeof p), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      ssize_t w = write(fd, reason, strlen(reason));
      (void)w;
      close(fd);
    }
  }
  return json_pack("{s:b, s:o, s:b, s:o, s:I, s:o}", "ok", *ok,
    "canary_ok", canary < 0 ? json_null() : json_boolean(canary), "roundtrip_ok", rt,
    "fs_errors", errs, "ms", (json_int_t)((now_mono_us() - t0) / 1000),
    "reason", *ok ? json_null() : jstr(reason, strlen(reason)));
}

int write_canary(const unsigned char *data, size_t n, char *err, size_t errn) {
  char p[4096], d[4096];
  mkdir_p(path_in_root("/var/lib/thaw", d, sizeof d), 0700);
  const char *path = path_in_root(CANARY, p, sizeof p);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) { snprintf(err, errn, "open %s: %s", CANARY, strerror(errno)); return -1; }
  int ok = write(fd, data, n) == (ssize_t)n && fsync(fd) == 0;
  int e = errno;
  close(fd);
  if (!ok) { snprintf(err, errn, "write %s: %s", CANARY, strerror(e)); return -1; }
  return 0;
}
