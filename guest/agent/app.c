/* The app supervisor: starts the app as a new session and process group with
 * the env the host delivered (never written to a file), captures its stdout
 * and stderr into a bounded ring, reports when it listens, stops it with a
 * grace period and reports its exit. */
#include "agent.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct app_state APP = { .out_fd = -1, .start_id = -1, .stop_id = -1 };

/* ---- the log ring: the last LOG_RING_BYTES of the app's output ---- */
static char *ring;
static size_t ring_len, ring_head; /* head: where the next byte goes */

static void ring_put(const char *b, size_t n) {
  if (!ring && !(ring = zmalloc(LOG_RING_BYTES))) return;
  for (size_t i = 0; i < n; i++) {
    ring[ring_head] = b[i];
    ring_head = (ring_head + 1) % LOG_RING_BYTES;
    if (ring_len < LOG_RING_BYTES) ring_len++;
  }
}

size_t ring_tail(char *out, size_t max) {
  size_t n = ring_len < max ? ring_len : max;
  size_t start = (ring_head + LOG_RING_BYTES - n) % LOG_RING_BYTES;
  for (size_t i = 0; i < n; i++) out[i] = ring[(start + i) % LOG_RING_BYTES];
  /* don't start in the middle of a UTF-8 sequence */
  size_t skip = 0;
  while (skip < n && skip < 3 && (out[skip] & 0xc0) == 0x80) skip++;
  if (skip) memmove(out, out + skip, n - skip);
  return n - skip;
}

void ring_clear(void) {
  if (ring) zfree(ring);
  ring = NULL;
  ring_len = ring_head = 0;
}

/* ---- sessions this agent started (test mode kills only these at scrub) ---- */
static pid_t sids[64];
static int nsids;
int started_sid(pid_t sid) {
  for (int i = 0; i < nsids; i++) if (sids[i] == sid) return 1;
  return 0;
}

/* PATH lookup in the app's own env, as execvp would do with it. */
static const char *env_path(char *const envp[]) {
  for (char *const *e = envp; *e; e++) if (!strncmp(*e, "PATH=", 5)) return *e + 5;
  return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
}

static void exec_in_path(char *const argv[], char *const envp[]) {
  if (strchr(argv[0], '/')) { execve(argv[0], argv, envp); return; }
  const char *p = env_path(envp);
  char buf[4096];
  int saved = ENOENT;
  while (*p) {
    size_t l = strcspn(p, ":");
    if (l > 0 && l + strlen(argv[0]) + 2 < sizeof buf) {
      memcpy(buf, p, l);
      buf[l] = '/';
      strcpy(buf + l + 1, argv[0]);
      execve(buf, argv, envp);
      if (errno != ENOENT && errno != ENOTDIR) saved = errno;
    }
    p += l;
    if (*p == ':') p++;
  }
  errno = saved;
}

/* Fork and exec in a new session. The child reports a failed exec through a
 * close-on-exec pipe, so a missing binary is an error here, not a silent exit. */
pid_t spawn_process(char *const argv[], char *const envp[], const char *cwd, uid_t uid, gid_t gid,
                    int out_fd, int err_fd, char *err, size_t errn) {
  int ep[2];
  if (pipe2(ep, O_CLOEXEC) < 0) { snprintf(err, errn, "pipe: %s", strerror(errno)); return -1; }
  pid_t pid = fork();
  if (pid < 0) { snprintf(err, errn, "fork: %s", strerror(errno)); close(ep[0]); close(ep[1]); return -1; }
  if (pid == 0) {
    struct { int step; int err; } e = { 0, 0 };
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    setsid();
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul >= 0) dup2(nul, 0);
    dup2(out_fd >= 0 ? out_fd : nul, 1);
    dup2(err_fd >= 0 ? err_fd : nul, 2);
    if (setgroups(0, NULL) < 0 && errno != EPERM) { e.step = 1; goto fail; }
    if (getgid() != gid && setgid(gid) < 0) { e.step = 2; goto fail; }
    if (getuid() != uid && setuid(uid) < 0) { e.step = 3; goto fail; }
    if (chdir(cwd) < 0) { e.step = 4; goto fail; }
    exec_in_path(argv, envp);
    e.step = 5;
  fail:
    e.err = errno;
    ssize_t w = write(ep[1], &e, sizeof e);
    (void)w;
    _exit(127);
  }
  close(ep[1]);
  struct { int step; int err; } e = { 0, 0 };
  ssize_t r;
  do r = read(ep[0], &e, sizeof e); while (r < 0 && errno == EINTR);
  close(ep[0]);
  if (r == (ssize_t)sizeof e) {
    static const char *const what[] = { "", "setgroups", "setgid", "setuid", "chdir to the working folder", "exec" };
    snprintf(err, errn, "%s %s failed: %s", what[e.step], e.step == 5 ? argv[0] : e.step == 4 ? cwd : "", strerror(e.err));
    waitpid(pid, NULL, 0);
    return -1;
  }
  if (nsids < 64) sids[nsids++] = pid;
  return pid;
}

int app_start(struct request *r, char **envp, char *err, size_t errn) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) { snprintf(err, errn, "pipe: %s", strerror(errno)); return -1; }
  pid_t pid = spawn_process((char *const *)r->argv, envp, r->cwd, (uid_t)r->uid, (gid_t)r->gid, p[1], p[1], err, errn);
  close(p[1]);
  if (pid < 0) { close(p[0]); return -1; }
  fcntl(p[0], F_SETFL, O_NONBLOCK);
  APP.pid = pid;
  APP.out_fd = p[0];
  APP.port = (int)r->port;
  APP.start_id = r->id;
  APP.started_us = now_mono_us();
  APP.listen_deadline_us = APP.started_us + r->listen_timeout_ms * 1000;
  APP.kill_at_us = 0;
  return 0;
}

void app_read_output(void) {
  char buf[16384];
  for (;;) {
    ssize_t n = read(APP.out_fd, buf, sizeof buf);
    if (n > 0) { ring_put(buf, (size_t)n); continue; }
    if (n == 0) { close(APP.out_fd); APP.out_fd = -1; }
    break;
  }
}

static void tail_str(char *out, size_t max) {
  size_t n = ring ? ring_tail(out, max - 1) : 0;
  out[n] = 0;
}

/* Does anything listen on the TCP port (IPv4 or IPv6)? */
static int listening(int port) {
  static const char *const files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
  for (int f = 0; f < 2; f++) {
    FILE *fp = fopen(files[f], "re");
    if (!fp) continue;
    char line[512];
    int found = 0;
    while (!found && fgets(line, sizeof line, fp)) {
      char *colon = strchr(line, ':');
      if (!colon) continue;
      char *local = strchr(colon + 1, ':'); /* "ADDR:PORT" after "sl:" */
      if (!local) continue;
      unsigned p, st;
      if (sscanf(local + 1, "%x %*s %x", &p, &st) == 2 && (int)p == port && st == 0x0A) found = 1;
    }
    fclose(fp);
    if (found) return 1;
  }
  return 0;
}

void app_tick(void) {
  int64_t now = now_mono_us();
  if (APP.pid > 0 && APP.start_id >= 0) {
    if (listening(APP.port)) {
      reply_ok(APP.start_id, json_pack("{s:i, s:I}", "pid", (int)APP.pid, "listen_ms", (json_int_t)((now - APP.started_us) / 1000)));
      APP.start_id = -1;
    } else if (now >= APP.listen_deadline_us) {
      char tail[4000];
      tail_str(tail, sizeof tail);
      reply_err(APP.start_id, "APP_START_TIMEOUT", "app did not listen on %d within %lld ms\n%s", APP.port,
                (long long)((APP.listen_deadline_us - APP.started_us) / 1000), tail);
      APP.start_id = -1;
    }
  }
  if (APP.pid > 0 && APP.kill_at_us && now >= APP.kill_at_us) {
    kill(-APP.pid, SIGKILL);
    APP.kill_at_us = 0;
  }
}

int64_t app_next_deadline(void) {
  int64_t d = INT64_MAX;
  if (APP.pid > 0 && APP.start_id >= 0) d = now_mono_us() + 10000; /* listen check every 10 ms */
  if (APP.pid > 0 && APP.kill_at_us && APP.kill_at_us < d) d = APP.kill_at_us;
  return d;
}

void app_stop(int64_t id, int64_t timeout_ms) {
  if (APP.pid <= 0) {
    reply_ok(id, json_pack("{s:n, s:n, s:n}", "pid", "code", "signal"));
    return;
  }
  if (APP.stop_id >= 0) reply_err(APP.stop_id, "AGENT_ERROR", "superseded by another stop_app");
  APP.stop_id = id;
  kill(-APP.pid, SIGTERM);
  APP.kill_at_us = now_mono_us() + timeout_ms * 1000;
}

void app_forward_signal(int sig) {
  if (APP.pid > 0) kill(-APP.pid, sig);
}

void app_on_exit(pid_t pid, int status) {
  if (pid != APP.pid) return;
  if (APP.out_fd >= 0) app_read_output();
  kill(-pid, SIGKILL); /* the rest of its process group */
  json_t *code = WIFEXITED(status) ? json_integer(WEXITSTATUS(status)) : json_null();
  json_t *sig = WIFSIGNALED(status) ? json_string(sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "UNKNOWN") : json_null();
  if (WIFSIGNALED(status)) {
    char name[32];
    snprintf(name, sizeof name, "SIG%s", sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "UNKNOWN");
    json_decref(sig);
    sig = json_string(name);
  }
  char tail[4000];
  tail_str(tail, sizeof tail);
  if (APP.start_id >= 0) {
    reply_err(APP.start_id, "APP_CRASHED", "app exited before listening on %d\n%s", APP.port, tail);
    APP.start_id = -1;
  }
  if (APP.stop_id >= 0) {
    reply_ok(APP.stop_id, json_pack("{s:i, s:O, s:O}", "pid", (int)pid, "code", code, "signal", sig));
    APP.stop_id = -1;
  }
  send_msg(json_pack("{s:s, s:i, s:o, s:o, s:o}", "type", "app_exit", "pid", (int)pid, "code", code, "signal", sig, "log_tail", jstr(tail, strlen(tail))));
  APP.pid = 0;
  APP.kill_at_us = 0;
  if (APP.out_fd >= 0) { close(APP.out_fd); APP.out_fd = -1; }
}
