/* Volumes: the app's ext4 disk, mounted only after the gate and unmounted
 * before every pause, so a seed's memory image never holds a page of it.
 * mount_volume: mkdir -p PATH, mount DEVICE there (ext4). unmount_volume: sync,
 * umount (killing stray processes that keep it busy), then drop the device's
 * buffer cache (BLKFLSBUF); the kernel zeroes freed pages (init_on_free=1).
 * In test mode (on a host) nothing is mounted: the path is made under the
 * test root and the answers say mounted:false. */
#include "agent.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

/* The device mounted at path per /proc/self/mounts, into dev; 1 if mounted, 0 if not. */
static int mounted_at(const char *path, char *dev, size_t devn) {
  FILE *f = fopen("/proc/self/mounts", "re");
  if (!f) return 0;
  char line[4096], d[1024], m[2048];
  int hit = 0;
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "%1023s %2047s", d, m) != 2) continue;
    if (!strcmp(m, path)) { hit = 1; if (dev) snprintf(dev, devn, "%s", d); }
  }
  fclose(f);
  return hit;
}

/* A block device other than the root disk (/dev/vda) is mounted: its path into out. */
int volume_mounted(char *out, size_t n) {
  if (!CFG.guest) return 0;
  FILE *f = fopen("/proc/self/mounts", "re");
  if (!f) return 0;
  char line[4096], d[1024], m[2048];
  int hit = 0;
  while (!hit && fgets(line, sizeof line, f)) {
    if (sscanf(line, "%1023s %2047s", d, m) != 2) continue;
    if (!strncmp(d, "/dev/vd", 7) && strcmp(d, "/dev/vda")) { hit = 1; snprintf(out, n, "%s on %s", d, m); }
  }
  fclose(f);
  return hit;
}

static void do_mount(struct request *r) {
  int64_t t0 = now_mono_us();
  if (gate_failed) { reply_err(r->id, "GATE_FAILED", "refusing to mount the volume: %s", gate_reason); return; }
  if (APP.pid > 0) { reply_err(r->id, "AGENT_ERROR", "mount the volume before the app starts (pid %d runs)", (int)APP.pid); return; }
  char p[4096];
  const char *dst = path_in_root(r->path, p, sizeof p);
  if (mkdir_p(dst, 0755) < 0 && errno != EEXIST) { reply_err(r->id, "AGENT_ERROR", "mkdir %s: %s", r->path, strerror(errno)); return; }
  int mounted = 0;
  if (CFG.guest) {
    /* The path must be its own real path: through a symlink (/var/run -> /run) it would land on
     * a folder the host's path check never saw. */
    char real[4096];
    if (!realpath(dst, real)) { reply_err(r->id, "AGENT_ERROR", "realpath %s: %s", r->path, strerror(errno)); return; }
    if (strcmp(real, dst)) { reply_err(r->id, "VOLUME_INVALID", "volume path %s leads through a symlink (to %s)", r->path, real); return; }
    char dev[1024];
    if (mounted_at(dst, dev, sizeof dev)) {
      if (strcmp(dev, r->device)) { reply_err(r->id, "AGENT_ERROR", "%s already holds %s", r->path, dev); return; }
    } else if (mount(r->device, dst, "ext4", MS_NOATIME | MS_NODEV, "errors=remount-ro") < 0) {
      reply_err(r->id, "AGENT_ERROR", "mount %s on %s: %s", r->device, r->path, strerror(errno));
      return;
    }
    mounted = 1;
  }
  reply_ok(r->id, json_pack("{s:s, s:s, s:b, s:I}", "device", r->device, "path", r->path, "mounted", mounted,
                            "ms", (json_int_t)((now_mono_us() - t0) / 1000)));
}

static void do_unmount(struct request *r) {
  int64_t t0 = now_mono_us();
  if (CFG.guest) sync(); /* first, whatever follows: what the app wrote reaches the host file */
  if (APP.pid > 0) { reply_err(r->id, "AGENT_ERROR", "stop the app before unmounting the volume (pid %d runs)", (int)APP.pid); return; }
  int was = 0, killed = 0;
  if (CFG.guest) {
    char dev[1024];
    was = mounted_at(r->path, dev, sizeof dev);
    if (was && strcmp(dev, r->device)) { reply_err(r->id, "AGENT_ERROR", "%s holds %s, not %s", r->path, dev, r->device); return; }
    sync();
    for (int tries = 0; was && umount2(r->path, 0) < 0; tries++) {
      /* Something the app left (a daemonised child) keeps it busy: no user process survives a sleep anyway. */
      if (errno != EBUSY || tries >= 20) { reply_err(r->id, "AGENT_ERROR", "umount %s: %s", r->path, strerror(errno)); return; }
      kill_user_processes();
      killed = 1;
      usleep(50000);
    }
    int fd = open(r->device, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ioctl(fd, BLKFLSBUF, 0) < 0) {
      int e = errno;
      if (fd >= 0) close(fd);
      reply_err(r->id, "AGENT_ERROR", "dropping the cache of %s: %s", r->device, strerror(e));
      return;
    }
    close(fd);
  }
  reply_ok(r->id, json_pack("{s:s, s:b, s:b, s:I}", "path", r->path, "was_mounted", was, "killed_stray", killed,
                            "ms", (json_int_t)((now_mono_us() - t0) / 1000)));
}

void volume_request(struct request *r) {
  if (r->op == OP_MOUNT_VOLUME) do_mount(r);
  else do_unmount(r);
}
