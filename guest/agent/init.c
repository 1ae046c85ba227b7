/* PID 1, from the initramfs: loads the virtio and ext4 modules, mounts the
 * app's root disk and switches into it, mounts what the platform manages
 * (/proc, /sys, /dev, /run, /tmp), sets the hostname and the network, then
 * runs the agent as a child and starts a fresh one whenever it exits. It
 * reaps every orphan and forwards termination signals to the agent (which
 * forwards them to the app's process group). Init itself never sees env: a
 * respawned agent is a fork of a process whose memory held no secret. */
#include "agent.h"
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void power_off(void) {
  sync();
  reboot(RB_POWER_OFF);
  for (;;) pause();
}

static void console(void) {
  if (fcntl(1, F_GETFD) >= 0) return;
  int fd = open("/dev/console", O_RDWR | O_NOCTTY);
  if (fd < 0) return;
  dup2(fd, 0);
  dup2(fd, 1);
  dup2(fd, 2);
  if (fd > 2) close(fd);
}

static int cmdline_has(const char *word) {
  char buf[4096] = "";
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  for (char *t = strtok(buf, " \n"); t; t = strtok(NULL, " \n")) if (!strcmp(t, word)) return 1;
  return 0;
}

/* /modules/order lists module files in load order; each is loaded with finit_module. */
static void load_modules(void) {
  FILE *f = fopen("/modules/order", "re");
  if (!f) return;
  char name[256];
  while (fgets(name, sizeof name, f)) {
    name[strcspn(name, "\n")] = 0;
    if (!name[0]) continue;
    char path[300];
    snprintf(path, sizeof path, "/modules/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST) logc("THAW: module %s: %s", name, strerror(errno));
    close(fd);
    unlink(path); /* the initramfs stays in RAM: free what is no longer needed */
  }
  fclose(f);
}

static void mnt(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
  mkdir_p(dst, 0755);
  if (mount(src, dst, type, flags, data) < 0 && errno != EBUSY) logc("THAW: mount %s on %s: %s", type, dst, strerror(errno));
}

static void switch_root(void) {
  for (int i = 0; i < 500 && access("/dev/vda", F_OK) < 0; i++) usleep(10000);
  mkdir("/newroot", 0755);
  if (mount("/dev/vda", "/newroot", "ext4", MS_NOATIME, "") < 0) {
    logc("THAW: cannot mount /dev/vda: %s", strerror(errno));
    power_off();
  }
  mkdir("/newroot/dev", 0755);
  if (mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL) < 0) logc("THAW: move /dev: %s", strerror(errno));
  umount2("/proc", MNT_DETACH);
  umount2("/sys", MNT_DETACH);
  if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) {
    logc("THAW: switching to the root disk failed: %s", strerror(errno));
    power_off();
  }
}

/* What the platform manages at run time: never read from the image. */
static void platform_mounts(void) {
  mnt("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mnt("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mnt("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666");
  mnt("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mnt("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64m");
  mnt("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mkdir("/run/thaw", 0700);
  static const char *const links[][2] = { { "/proc/self/fd", "/dev/fd" }, { "/proc/self/fd/0", "/dev/stdin" },
                                          { "/proc/self/fd/1", "/dev/stdout" }, { "/proc/self/fd/2", "/dev/stderr" } };
  for (size_t i = 0; i < sizeof links / sizeof *links; i++) if (symlink(links[i][0], links[i][1]) < 0 && errno != EEXIST) {}
}

/* /etc/hosts, /etc/resolv.conf and /etc/hostname come from the platform: files
 * on /run bind-mounted over the image's (an empty file is created where the
 * image has none; a symlink is left alone). Nothing of the image is changed. */
static void platform_etc(void) {
  static const char *const files[][2] = {
    { "hosts", "127.0.0.1 localhost thaw\n::1 localhost ip6-localhost ip6-loopback\n" },
    { "resolv.conf", "nameserver 10.0.2.3\n" },
    { "hostname", "thaw\n" },
  };
  struct stat st;
  if (stat("/etc", &st) < 0 || !S_ISDIR(st.st_mode)) return;
  mkdir("/run/thaw-etc", 0755);
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char src[64], dst[64];
    snprintf(src, sizeof src, "/run/thaw-etc/%s", files[i][0]);
    snprintf(dst, sizeof dst, "/etc/%s", files[i][0]);
    int fd = open(src, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) continue;
    ssize_t w = write(fd, files[i][1], strlen(files[i][1]));
    (void)w;
    close(fd);
    if (lstat(dst, &st) < 0) {
      int nf = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (nf < 0) continue;
      close(nf);
    } else if (!S_ISREG(st.st_mode)) {
      continue;
    }
    if (mount(src, dst, NULL, MS_BIND, NULL) < 0) logc("THAW: bind %s: %s", dst, strerror(errno));
  }
}

static void ifup(int s, const char *name, const char *addr, const char *mask) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  if (addr) {
    struct sockaddr_in *sa = (struct sockaddr_in *)&ifr.ifr_addr;
    sa->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &sa->sin_addr);
    if (ioctl(s, SIOCSIFADDR, &ifr) < 0) logc("THAW: address of %s: %s", name, strerror(errno));
    inet_pton(AF_INET, mask, &sa->sin_addr);
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) logc("THAW: netmask of %s: %s", name, strerror(errno));
  }
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) logc("THAW: %s up: %s", name, strerror(errno));
  }
}

/* The guest's address is the same on every VM (it is frozen in the memory
 * image, and a thaw may run anywhere): 10.0.2.15/24 via 10.0.2.2. */
static void network(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  ifup(s, "lo", NULL, NULL);
  ifup(s, "eth0", "10.0.2.15", "255.255.255.0");
  struct rtentry rt;
  memset(&rt, 0, sizeof rt);
  struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway, *dst = (struct sockaddr_in *)&rt.rt_dst, *mask = (struct sockaddr_in *)&rt.rt_genmask;
  gw->sin_family = dst->sin_family = mask->sin_family = AF_INET;
  inet_pton(AF_INET, "10.0.2.2", &gw->sin_addr);
  rt.rt_flags = RTF_UP | RTF_GATEWAY;
  if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST) logc("THAW: default route: %s", strerror(errno));
  close(s);
}

static pid_t spawn_agent(void) {
  pid_t pid;
  while ((pid = fork()) < 0) { /* never leave the VM without an agent */
    logc("THAW: fork of the agent failed: %s; retrying", strerror(errno));
    usleep(100000);
  }
  if (pid == 0) {
    CFG.guest = 1;
    CFG.kmsg = "/dev/kmsg";
    exit(agent_main());
  }
  return pid;
}

int init_main(void) {
  mnt("proc", "/proc", "proc", 0, NULL);
  mnt("sysfs", "/sys", "sysfs", 0, NULL);
  mnt("devtmpfs", "/dev", "devtmpfs", 0, NULL);
  console();
  if (cmdline_has("thaw.probe=1")) {
    printf("THAW-PROBE-OK\n");
    fflush(stdout);
    power_off();
  }
  load_modules();
  switch_root();
  platform_mounts();
  platform_etc();
  sethostname("thaw", 4);
  network();
  logc("THAW-INIT-OK");

  sigset_t set;
  sigfillset(&set);
  sigprocmask(SIG_BLOCK, &set, NULL);
  sigset_t watch;
  sigemptyset(&watch);
  int fwd[] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGPWR };
  for (size_t i = 0; i < sizeof fwd / sizeof *fwd; i++) sigaddset(&watch, fwd[i]);
  sigaddset(&watch, SIGCHLD);
  int sfd = signalfd(-1, &watch, SFD_CLOEXEC);
  pid_t agent = spawn_agent();
  for (;;) {
    struct signalfd_siginfo si;
    if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si) continue;
    if (si.ssi_signo != SIGCHLD) {
      if (agent > 0) kill(agent, (int)si.ssi_signo);
      continue;
    }
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      if (pid != agent) continue; /* an orphan, reaped */
      if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) logc("THAW: agent exited (status %d), restarting", status);
      usleep(20000);
      agent = spawn_agent();
    }
  }
}
