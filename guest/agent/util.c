/* Memory that is zeroed when freed, strings, time, paths. */
#include "agent.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct zhdr { size_t n; size_t pad; };

void *zmalloc(size_t n) {
  if (n > ((size_t)1 << 30)) return NULL;
  struct zhdr *h = malloc(sizeof *h + n);
  if (!h) return NULL;
  h->n = n;
  return h + 1;
}

void zfree(void *p) {
  if (!p) return;
  struct zhdr *h = (struct zhdr *)p - 1;
  explicit_bzero(p, h->n);
  free(h);
}

char *zstrndup(const char *s, size_t n) {
  char *d = zmalloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

int64_t now_mono_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

int64_t now_real_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

void logc(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof buf - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  ssize_t w = write(2, buf, (size_t)n);
  (void)w;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned min;
  if ((c & 0xe0) == 0xc0) { len = 2; min = 0x80; c &= 0x1f; }
  else if ((c & 0xf0) == 0xe0) { len = 3; min = 0x800; c &= 0x0f; }
  else if ((c & 0xf8) == 0xf0) { len = 4; min = 0x10000; c &= 0x07; }
  else return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    c = (c << 6) | (s[i] & 0x3f);
  }
  if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
  return len;
}

json_t *jstr(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  char *out = malloc(n * 3 + 1);
  if (!out) return json_string("");
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    size_t l = utf8_seq(u + i, n - i);
    if (l == 0) { memcpy(out + o, "\xef\xbf\xbd", 3); o += 3; i++; continue; }
    memcpy(out + o, u + i, l);
    o += l;
    i += l;
  }
  json_t *j = json_stringn(out, o);
  free(out);
  return j ? j : json_string("");
}

int mkdir_p(const char *path, mode_t mode) {
  char tmp[4096];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof tmp) return -1;
  memcpy(tmp, path, n + 1);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(tmp, mode) < 0 && errno != EEXIST) return -1;
  return 0;
}

static int rm_at(int dfd, dev_t dev) {
  DIR *d = fdopendir(dfd);
  if (!d) { close(dfd); return -1; }
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
    if (S_ISDIR(st.st_mode)) {
      if (st.st_dev != dev) { rc = -1; continue; } /* a mount point: leave it */
      int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub >= 0) rm_at(sub, dev);
      if (unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR) < 0) rc = -1;
    } else if (unlinkat(dirfd(d), e->d_name, 0) < 0) {
      rc = -1;
    }
  }
  closedir(d);
  return rc;
}

int rm_tree_contents(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -1;
  struct stat st;
  if (fstat(fd, &st) < 0) { close(fd); return -1; }
  return rm_at(fd, st.st_dev);
}

const char *path_in_root(const char *p, char *buf, size_t n) {
  if (!CFG.root || !CFG.root[0]) return p;
  snprintf(buf, n, "%s%s", CFG.root, p);
  return buf;
}
