/* The agent's event loop: one thread, poll() over the host channel, the
 * app's output pipe, exec pipes, a vsock listener and a signalfd. Lines are
 * framed here (at most MAX_LINE_BYTES; longer ones are answered with
 * AGENT_PROTOCOL and skipped); writes are queued and never block the loop.
 *
 * The channel is a virtio-serial port in a QEMU guest: reads return 0 and
 * poll() reports POLLHUP while no host is connected (right after a restore,
 * before the new QEMU's socket is connected). On reconnect the agent says
 * hello. Under Firecracker the channel is the latest vsock connection. */
#include "agent.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <linux/vm_sockets.h>
#include <unistd.h>

struct agent_cfg CFG = { .channel_fd = -1, .root = "" };

static int chan = -1, vsock_listen = -1, sigfd = -1;
static int connected = 1, exiting;
static char *out;
static size_t out_len, out_cap;
static char *in;
static size_t in_len;
static int discarding;

void chan_write(const char *buf, size_t n) {
  if (out_len + n > out_cap) {
    size_t cap = out_cap ? out_cap : 65536;
    while (cap < out_len + n) cap *= 2;
    char *b = zmalloc(cap);
    if (!b) return;
    if (out) { memcpy(b, out, out_len); zfree(out); }
    out = b;
    out_cap = cap;
  }
  memcpy(out + out_len, buf, n);
  out_len += n;
}

void agent_exit_after_flush(void) { exiting = 1; }

/* Test mode: the agent never leaves behind what it started (the app's process
 * group, exec commands), whichever way it ends. In a VM, init reaps orphans. */
static void agent_exit(int code) {
  if (!CFG.guest) {
    app_forward_signal(SIGKILL);
    exec_kill_all();
  }
  exit(code);
}

static void flush_out(void) {
  while (out_len > 0 && chan >= 0) {
    ssize_t n = write(chan, out, out_len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return; /* EAGAIN (host away or full) or error: retry when writable */
    memmove(out, out + n, out_len - (size_t)n);
    out_len -= (size_t)n;
  }
  if (out_len == 0 && out_cap > (1 << 20)) { zfree(out); out = NULL; out_cap = 0; }
}

static void on_line(char *line, size_t len) {
  while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t')) len--; /* JSON whitespace */
  if (len == 0) return;
  struct request r;
  int64_t id;
  char msg[512];
  if (request_parse(line, len, &r, &id, msg, sizeof msg) < 0) { reply_err(id, "AGENT_PROTOCOL", "%s", msg); return; }
  handle_request(&r);
  request_free(&r);
  flush_out(); /* each answer leaves at once: a ping is not held back by a gate behind it */
}

static void on_readable(void) {
  if (!in && !(in = zmalloc(MAX_LINE_BYTES + 1))) return;
  for (;;) {
    size_t room = MAX_LINE_BYTES + 1 - in_len;
    ssize_t n = read(chan, in + in_len, room);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 && CFG.guest && CFG.channel_fd < 0 && vsock_listen < 0) { connected = 0; in_len = 0; discarding = 0; return; }
    if (n == 0) { /* a socket's peer closed: test mode ends, a vsock channel waits for the next connection */
      if (CFG.channel_fd >= 0) agent_exit(0);
      close(chan);
      chan = -1;
      in_len = 0;
      discarding = 0;
      return;
    }
    if (n < 0) return;
    size_t start = in_len;
    in_len += (size_t)n;
    size_t from = 0;
    for (size_t i = start; i < in_len; i++) {
      if (in[i] != '\n') continue;
      if (!discarding) on_line(in + from, i - from);
      discarding = 0;
      from = i + 1;
    }
    memmove(in, in + from, in_len - from);
    explicit_bzero(in + (in_len - from), from);
    in_len -= from;
    if (in_len > MAX_LINE_BYTES) {
      if (!discarding) reply_err(-1, "AGENT_PROTOCOL", "message longer than %d bytes", MAX_LINE_BYTES);
      discarding = 1;
      explicit_bzero(in, in_len);
      in_len = 0;
    }
  }
}

static const char *find_port(char *buf, size_t n) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (!d) return NULL;
  struct dirent *e;
  const char *found = NULL;
  while (!found && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char p[512], name[64] = "";
    snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
    FILE *f = fopen(p, "re");
    if (!f) continue;
    if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
    fclose(f);
    if (!strcmp(name, AGENT_PORT_NAME)) { snprintf(buf, n, "/dev/%s", e->d_name); found = buf; }
  }
  closedir(d);
  return found;
}

static void open_channel(void) {
  if (CFG.channel_fd >= 0) { /* inherited without close-on-exec: the app and exec commands must not get it */
    chan = CFG.channel_fd;
    fcntl(chan, F_SETFD, FD_CLOEXEC);
    return;
  }
  int vs = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (vs >= 0) {
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = AGENT_VSOCK_PORT };
    if (bind(vs, (struct sockaddr *)&a, sizeof a) == 0 && listen(vs, 4) == 0) vsock_listen = vs;
    else close(vs);
  }
  for (int i = 0; i < 1000; i++) { /* a virtio-serial port, if the VMM gives one: up to 5 s */
    char dev[300];
    if (find_port(dev, sizeof dev)) {
      chan = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
      if (chan >= 0) {
        if (vsock_listen >= 0) { close(vsock_listen); vsock_listen = -1; }
        return;
      }
    }
    if (vsock_listen >= 0) return; /* Firecracker: no serial port; wait for a vsock connection */
    usleep(5000);
  }
  logc("THAW: no agent channel (no virtio-serial port \"%s\", no vsock)", AGENT_PORT_NAME);
  exit(1);
}

static void on_signal(void) {
  struct signalfd_siginfo si;
  while (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
    if (si.ssi_signo == SIGCHLD) continue;
    /* On a test host a termination signal ends the agent; in a VM it goes to the app. */
    if (!CFG.guest && (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)) agent_exit(0);
    app_forward_signal((int)si.ssi_signo);
  }
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    if (pid == APP.pid) app_on_exit(pid, status);
    else exec_on_exit(pid, status);
  }
}

int agent_main(void) {
  sigset_t set;
  sigemptyset(&set);
  int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGPWR, SIGPIPE };
  for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaddset(&set, sigs[i]);
  sigprocmask(SIG_BLOCK, &set, NULL);
  sigdelset(&set, SIGPIPE); /* blocked and ignored: EPIPE instead */
  sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  seal_keygen();
  kmsg_open();
  gate_load_failure();
  open_channel();
  if (chan >= 0) fcntl(chan, F_SETFL, O_NONBLOCK);
  if (chan >= 0) send_hello();
  for (;;) {
    if (exiting && out_len == 0) agent_exit(0);
    struct pollfd fds[16];
    int n = 0, ichan = -1, ivs = -1, iapp = -1;
    if (chan >= 0 && connected) { ichan = n; fds[n++] = (struct pollfd){ .fd = chan, .events = POLLIN | (out_len ? POLLOUT : 0) }; }
    if (vsock_listen >= 0) { ivs = n; fds[n++] = (struct pollfd){ .fd = vsock_listen, .events = POLLIN }; }
    if (APP.out_fd >= 0) { iapp = n; fds[n++] = (struct pollfd){ .fd = APP.out_fd, .events = POLLIN }; }
    int isig = n;
    fds[n++] = (struct pollfd){ .fd = sigfd, .events = POLLIN };
    int iexec = n;
    exec_poll_fds(fds, &n, 16);
    int64_t deadline = app_next_deadline(), d2 = exec_next_deadline();
    if (d2 < deadline) deadline = d2;
    int timeout = -1;
    if (chan >= 0 && !connected) timeout = 2; /* host away: look again shortly */
    if (exiting) timeout = 2;
    if (deadline != INT64_MAX) {
      int64_t ms = (deadline - now_mono_us() + 999) / 1000;
      if (ms < 0) ms = 0;
      if (timeout < 0 || ms < timeout) timeout = (int)ms;
    }
    int rc = poll(fds, (nfds_t)n, timeout);
    if (rc < 0 && errno != EINTR) { logc("THAW: poll: %s", strerror(errno)); exit(1); }
    if (chan >= 0 && !connected) {
      struct pollfd p = { .fd = chan, .events = POLLIN };
      if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP)) { connected = 1; send_hello(); }
    }
    if (rc > 0) {
      if (isig >= 0 && fds[isig].revents) on_signal();
      if (iapp >= 0 && fds[iapp].revents) app_read_output();
      for (int i = iexec; i < n; i++) if (fds[i].revents) exec_on_readable(fds[i].fd);
      if (ivs >= 0 && (fds[ivs].revents & POLLIN)) {
        int c = accept4(vsock_listen, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0) {
          if (chan >= 0) close(chan);
          chan = c;
          in_len = 0;
          discarding = 0;
          send_hello();
        }
      }
      if (ichan >= 0 && fds[ichan].revents & (POLLIN | POLLHUP | POLLERR)) on_readable();
    }
    app_tick();
    exec_tick();
    flush_out();
  }
}
