/* One handler per request op (src/wire/agent.ts). Requests are handled in the
 * order they arrive; start_app, stop_app and exec answer later, from the loop. */
#include "agent.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t clock_offset_us; /* test mode: the host's clock is never touched */

/* ---- exec: a command with captured output and a deadline ---- */
#define EXEC_MAX 4
#define EXEC_OUT (1 << 20)
struct exec_job { pid_t pid; int64_t id, deadline_us; int fd[2]; char *buf[2]; size_t len[2]; int status, done, killed; };
static struct exec_job jobs[EXEC_MAX];

static void exec_start(struct request *r) {
  struct exec_job *j = NULL;
  for (int i = 0; i < EXEC_MAX; i++) if (!jobs[i].pid) j = &jobs[i];
  if (!j) { reply_err(r->id, "AGENT_ERROR", "too many exec requests at once"); return; }
  int po[2], pe[2];
  if (pipe2(po, O_CLOEXEC) < 0) { reply_err(r->id, "AGENT_ERROR", "pipe: %s", strerror(errno)); return; }
  if (pipe2(pe, O_CLOEXEC) < 0) { close(po[0]); close(po[1]); reply_err(r->id, "AGENT_ERROR", "pipe: %s", strerror(errno)); return; }
  char err[256];
  char *envp[] = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL };
  pid_t pid = spawn_process((char *const *)r->argv, envp, "/", 0, 0, po[1], pe[1], err, sizeof err);
  close(po[1]);
  close(pe[1]);
  if (pid < 0) { close(po[0]); close(pe[0]); reply_err(r->id, "AGENT_ERROR", "%s", err); return; }
  memset(j, 0, sizeof *j);
  j->pid = pid;
  j->id = r->id;
  j->deadline_us = now_mono_us() + r->timeout_ms * 1000;
  j->fd[0] = po[0];
  j->fd[1] = pe[0];
  for (int k = 0; k < 2; k++) { fcntl(j->fd[k], F_SETFL, O_NONBLOCK); j->buf[k] = malloc(EXEC_OUT); }
}

static void exec_finish(struct exec_job *j) {
  for (int k = 0; k < 2; k++) if (j->fd[k] >= 0) exec_on_readable(j->fd[k]);
  if (!j->done || j->fd[0] >= 0 || j->fd[1] >= 0) return;
  json_t *code = WIFEXITED(j->status) ? json_integer(WEXITSTATUS(j->status)) : json_null();
  reply_ok(j->id, json_pack("{s:o, s:o, s:o}", "code", code, "stdout", jstr(j->buf[0] ? j->buf[0] : "", j->len[0]),
                            "stderr", jstr(j->buf[1] ? j->buf[1] : "", j->len[1])));
  free(j->buf[0]);
  free(j->buf[1]);
  memset(j, 0, sizeof *j);
}

void exec_on_readable(int fd) {
  for (int i = 0; i < EXEC_MAX; i++) {
    struct exec_job *j = &jobs[i];
    for (int k = 0; j->pid && k < 2; k++) {
      if (j->fd[k] != fd) continue;
      for (;;) {
        char tmp[8192];
        ssize_t n = read(fd, tmp, sizeof tmp);
        if (n > 0) {
          size_t room = EXEC_OUT - j->len[k];
          size_t c = (size_t)n < room ? (size_t)n : room;
          if (j->buf[k]) memcpy(j->buf[k] + j->len[k], tmp, c);
          j->len[k] += j->buf[k] ? c : 0;
          continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) { close(fd); j->fd[k] = -1; }
        break;
      }
    }
  }
}

void exec_poll_fds(struct pollfd *fds, int *n, int max) {
  for (int i = 0; i < EXEC_MAX; i++)
    for (int k = 0; jobs[i].pid && k < 2; k++)
      if (jobs[i].fd[k] >= 0 && *n < max) fds[(*n)++] = (struct pollfd){ .fd = jobs[i].fd[k], .events = POLLIN };
}

int exec_on_exit(pid_t pid, int status) {
  for (int i = 0; i < EXEC_MAX; i++) {
    if (jobs[i].pid != pid) continue;
    jobs[i].status = status;
    jobs[i].done = 1;
    exec_finish(&jobs[i]);
    return 1;
  }
  return 0;
}

/* The deadline holds until the answer, also after the command itself exited
 * while a child of it keeps its output open: SIGKILL to its process group, and
 * a second later stop waiting for output from anything that escaped it. */
void exec_tick(void) {
  int64_t now = now_mono_us();
  for (int i = 0; i < EXEC_MAX; i++) {
    struct exec_job *j = &jobs[i];
    if (!j->pid) continue;
    if (now >= j->deadline_us) {
      kill(-j->pid, SIGKILL);
      if (j->killed) for (int k = 0; k < 2; k++) if (j->fd[k] >= 0) { close(j->fd[k]); j->fd[k] = -1; }
      j->killed = 1;
      j->deadline_us = now + 1000000;
    }
    if (j->done) exec_finish(j);
  }
}

void exec_kill_all(void) {
  for (int i = 0; i < EXEC_MAX; i++) if (jobs[i].pid) kill(-jobs[i].pid, SIGKILL);
}

int64_t exec_next_deadline(void) {
  int64_t d = INT64_MAX;
  for (int i = 0; i < EXEC_MAX; i++) if (jobs[i].pid && jobs[i].deadline_us < d) d = jobs[i].deadline_us;
  return d;
}

/* ---- processes, from /proc ---- */
struct proc { pid_t pid, ppid, sid; char comm[64]; long rss_kib; };

/* Call fn for every user-space process (kernel threads are skipped). */
static void each_process(void (*fn)(const struct proc *, void *), void *arg) {
  DIR *d = opendir("/proc");
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    char *end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end || pid <= 0) continue;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = 0;
    char *l = strchr(buf, '('), *r = strrchr(buf, ')');
    struct proc p = { .pid = (pid_t)pid };
    unsigned flags;
    if (!l || !r || r < l || sscanf(r + 2, "%*c %d %*d %d %*d %*d %u", &p.ppid, &p.sid, &flags) != 3) continue;
    if (flags & 0x00200000 /* PF_KTHREAD */) continue;
    snprintf(p.comm, sizeof p.comm, "%.*s", (int)(r - l - 1), l + 1);
    snprintf(path, sizeof path, "/proc/%ld/statm", pid);
    FILE *sf = fopen(path, "re");
    if (sf) {
      if (fscanf(sf, "%*d %ld", &p.rss_kib) != 1) p.rss_kib = 0;
      p.rss_kib *= sysconf(_SC_PAGESIZE) / 1024;
      fclose(sf);
    }
    fn(&p, arg);
  }
  closedir(d);
}

static void add_process(const struct proc *p, void *arr) {
  json_array_append_new(arr, json_pack("{s:i, s:i, s:o, s:I}", "pid", (int)p->pid, "ppid", (int)p->ppid,
                                       "comm", jstr(p->comm, strlen(p->comm)), "rss_kib", (json_int_t)p->rss_kib));
}

/* ---- scrub: nothing of the app may survive into the seed ---- */
static void kill_stray(const struct proc *p, void *unused) {
  if (p->pid <= 1 || p->pid == getpid()) return;
  /* In a VM every user process but init and this agent goes; on a test host only what this agent started. */
  if (CFG.guest || started_sid(p->sid)) kill(p->pid, SIGKILL);
}

void kill_user_processes(void) {
  each_process(kill_stray, NULL);
}

static void do_scrub(struct request *r) {
  int64_t t0 = now_mono_us();
  if (APP.pid > 0) { reply_err(r->id, "AGENT_ERROR", "stop the app before scrub"); return; }
  unsigned char canary[65536];
  size_t n;
  if (sodium_base642bin(canary, sizeof canary, r->b64, strlen(r->b64), NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL) != 0 || n == 0) {
    reply_err(r->id, "AGENT_PROTOCOL", "canary_b64 must decode to 1 to 65536 bytes");
    return;
  }
  char vol[1024];
  if (volume_mounted(vol, sizeof vol)) { reply_err(r->id, "AGENT_ERROR", "refusing to bake with a volume mounted (%s): unmount it first", vol); return; }
  ring_clear();
  each_process(kill_stray, NULL);
  char p[4096];
  rm_tree_contents(path_in_root("/tmp", p, sizeof p));
  rm_tree_contents(path_in_root("/run/thaw", p, sizeof p));
  char first[256] = "";
  if (kmsg_fs_errors(NULL, first, sizeof first) > 0) {
    reply_err(r->id, "GATE_FAILED", "refusing to bake a machine with filesystem errors: %s", first);
    return;
  }
  char err[256];
  if (write_canary(canary, n, err, sizeof err) < 0) { reply_err(r->id, "AGENT_ERROR", "%s", err); return; }
  if (prepare_probe() < 0) { reply_err(r->id, "AGENT_ERROR", "writing the gate's probe file failed: %s", strerror(errno)); return; }
  sync();
  reply_ok(r->id, json_pack("{s:s, s:I}", "canary_path", "/var/lib/thaw/canary", "ms", (json_int_t)((now_mono_us() - t0) / 1000)));
}

/* ---- clock ---- */
/* Targets from 1970 to 2^52 us (year 2112): the clock_us of every later hello
 * must stay an integer the host can read (a safe integer: 2^53 us is in 2255). */
#define CLOCK_MAX_US ((int64_t)1 << 52)
static int set_real_us(int64_t us) {
  if (us < 0 || us > CLOCK_MAX_US) { errno = ERANGE; return -1; }
  if (!CFG.guest) { clock_offset_us = us - now_real_us(); return 0; }
  struct timespec t = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };
  return clock_settime(CLOCK_REALTIME, &t);
}

static void do_adjust(struct request *r) {
  int64_t d = r->delta_us;
  int stepped = 1;
  if (r->slew && d >= -100000 && d <= 100000) {
    struct timeval tv = { .tv_sec = d / 1000000, .tv_usec = d % 1000000 };
    if (tv.tv_usec < 0) { tv.tv_sec -= 1; tv.tv_usec += 1000000; }
    if (!CFG.guest) clock_offset_us += d; /* test mode: applied at once */
    else if (adjtime(&tv, NULL) < 0) { reply_err(r->id, "AGENT_ERROR", "adjtime: %s", strerror(errno)); return; }
    stepped = 0;
  } else if (set_real_us(now_real_us() + clock_offset_us + d) < 0) {
    reply_err(r->id, "AGENT_ERROR", "clock_settime: %s", strerror(errno));
    return;
  }
  reply_ok(r->id, json_pack("{s:I, s:b}", "guest_us", (json_int_t)(now_real_us() + clock_offset_us), "stepped", stepped));
}

void handle_request(struct request *r) {
  char err[512];
  switch (r->op) {
    case OP_PING:
      reply_ok(r->id, hello_json());
      return;
    case OP_START_APP: {
      /* Checked before the env is even opened: a machine whose gate failed never sees it. */
      if (gate_failed) { reply_err(r->id, "GATE_FAILED", "refusing to start the app: %s", gate_reason); return; }
      if (APP.pid > 0) { reply_err(r->id, "AGENT_ERROR", "an app is already running (pid %d)", (int)APP.pid); return; }
      char **envp = NULL;
      if (seal_open_env(&r->env, &envp, err, sizeof err) < 0) { reply_err(r->id, "AGENT_PROTOCOL", "%s", err); return; }
      int rc = app_start(r, envp, err, sizeof err);
      envp_free(envp);
      if (rc < 0) reply_err(r->id, "APP_CRASHED", "%s", err);
      return;
    }
    case OP_STOP_APP:
      app_stop(r->id, r->timeout_ms);
      return;
    case OP_SCRUB:
      do_scrub(r);
      return;
    case OP_RESPAWN:
      reply_ok(r->id, json_pack("{s:b}", "ok", 1));
      agent_exit_after_flush();
      return;
    case OP_SET_CLOCK:
      if (set_real_us(r->epoch_us) < 0) { reply_err(r->id, "AGENT_ERROR", "clock_settime: %s", strerror(errno)); return; }
      reply_ok(r->id, json_pack("{s:I}", "guest_us", (json_int_t)(now_real_us() + clock_offset_us)));
      return;
    case OP_ADJUST_CLOCK:
      do_adjust(r);
      return;
    case OP_RESEED: { /* any size the line can carry (the schema sets no other bound) */
      size_t cap = strlen(r->b64) / 4 * 3 + 3, n;
      unsigned char *ent = zmalloc(cap);
      if (!ent) { reply_err(r->id, "AGENT_ERROR", "out of memory"); return; }
      if (sodium_base642bin(ent, cap, r->b64, strlen(r->b64), NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL) != 0) {
        zfree(ent);
        reply_err(r->id, "AGENT_PROTOCOL", "entropy_b64 must be base64");
        return;
      }
      int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
      ssize_t w = fd >= 0 ? write(fd, ent, n) : -1;
      int e = errno;
      if (fd >= 0) close(fd);
      zfree(ent); /* zeroed */
      if (w != (ssize_t)n) { reply_err(r->id, "AGENT_ERROR", "writing /dev/urandom failed: %s", strerror(e)); return; }
      reply_ok(r->id, json_pack("{s:b}", "ok", 1));
      return;
    }
    case OP_GATE: {
      int ok;
      json_t *g = gate_run(r->canary_sha256, &ok);
      if (!ok) { /* never leave an app, or anything it started, on a machine that may lie */
        if (APP.pid > 0) kill(-APP.pid, SIGKILL);
        each_process(kill_stray, NULL);
      }
      reply_ok(r->id, g);
      return;
    }
    case OP_LOGS: {
      size_t max = r->max_bytes < LOG_RING_BYTES ? (size_t)r->max_bytes : LOG_RING_BYTES;
      char *buf = zmalloc(max + 1);
      size_t n = buf ? ring_tail(buf, max) : 0;
      reply_ok(r->id, json_pack("{s:o}", "text", jstr(buf ? buf : "", n)));
      zfree(buf);
      return;
    }
    case OP_EXEC:
      exec_start(r);
      return;
    case OP_PS: {
      json_t *arr = json_array();
      each_process(add_process, arr);
      reply_ok(r->id, json_pack("{s:o}", "processes", arr));
      return;
    }
    case OP_MOUNT_VOLUME: case OP_UNMOUNT_VOLUME:
      volume_request(r);
      return;
    case OP__COUNT:
      break;
  }
  reply_err(r->id, "AGENT_PROTOCOL", "unknown op");
}
