/* Thaw guest agent: PID 1 init + the agent that speaks src/wire/agent.ts.
 * One static binary, no dependency on the guest's root filesystem.
 * Files by duty: init.c (PID 1), loop.c (event loop, channel), protocol.c
 * (message parsing and replies), ops.c (request handlers), volume.c (the
 * app's volume), app.c (app supervisor), gate.c (liveness gate, kernel log), seal.c (env decryption),
 * util.c (memory, strings, time). */
#ifndef THAW_AGENT_H
#define THAW_AGENT_H
#define _GNU_SOURCE
#include <jansson.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PROTOCOL_VERSION 2
#define MAX_LINE_BYTES (1 << 20)
#define MAX_ARGV 4096
#define LOG_RING_BYTES (256 * 1024)
#define AGENT_PORT_NAME "thaw.agent"
#define AGENT_VSOCK_PORT 1024

/* ---- util.c ---- */
void *zmalloc(size_t n);     /* malloc that zeroes on free (zfree): used for anything that may hold env */
void zfree(void *p);
char *zstrndup(const char *s, size_t n);
int64_t now_mono_us(void);
int64_t now_real_us(void);
void logc(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* to the console (stderr) */
json_t *jstr(const char *s, size_t n); /* a JSON string, invalid UTF-8 replaced by U+FFFD */
int mkdir_p(const char *path, mode_t mode);
int rm_tree_contents(const char *dir); /* remove everything inside dir (not dir itself), not crossing mounts */
const char *path_in_root(const char *p, char *buf, size_t n); /* prefix p with the test root, if any */

/* ---- protocol.c ---- */
enum op {
  OP_PING, OP_START_APP, OP_STOP_APP, OP_SCRUB, OP_RESPAWN, OP_SET_CLOCK,
  OP_ADJUST_CLOCK, OP_RESEED, OP_GATE, OP_LOGS, OP_EXEC, OP_PS, OP_MOUNT_VOLUME,
  OP_UNMOUNT_VOLUME, OP__COUNT
};
extern const char *const OP_NAMES[OP__COUNT];

struct sealed { const char *epk, *nonce, *ct, *tag; };

struct request {
  int64_t id;
  enum op op;
  json_t *root;          /* owns every string below */
  const char **argv;     /* start_app, exec: NULL-terminated (zmalloc'd array) */
  size_t argc;
  const char *cwd;
  int64_t uid, gid, port, listen_timeout_ms, timeout_ms, max_bytes, epoch_us, delta_us;
  int slew;
  struct sealed env;
  const char *b64;       /* scrub canary_b64, reseed entropy_b64 */
  const char *canary_sha256; /* gate: NULL when null */
  const char *device, *path; /* mount_volume, unmount_volume */
};

/* Parse one line. 0 on success (free with request_free); else -1 with
 * *id set (-1 when unusable) and msg filled. Never crashes on any input. */
int request_parse(const char *line, size_t len, struct request *out, int64_t *id, char *msg, size_t msgn);
void request_free(struct request *r);

/* Replies (queued on the channel). */
void reply_ok(int64_t id, json_t *data);                 /* steals data */
void reply_err(int64_t id, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void send_hello(void);
void send_msg(json_t *msg);                              /* steals msg */
json_t *hello_json(void);

/* ---- loop.c ---- */
struct agent_cfg {
  int guest;             /* running under our init in a VM */
  int channel_fd;        /* test mode: the channel, already open */
  const char *root;      /* test mode: prefix for guest paths ("" in a VM) */
  const char *kmsg;      /* kernel log path */
};
extern struct agent_cfg CFG;
int agent_main(void);
void chan_write(const char *buf, size_t n);
void agent_exit_after_flush(void);
int add_timer_ms(int64_t deadline_us); /* the loop wakes by then */

/* ---- ops.c ---- */
void handle_request(struct request *r);
extern int64_t clock_offset_us; /* test mode: virtual clock offset */

/* ---- app.c ---- */
struct app_state {
  pid_t pid;              /* 0 when no app */
  int out_fd;             /* read end of the app's stdout+stderr pipe, -1 if none */
  int64_t start_id, stop_id;
  int64_t started_us, listen_deadline_us, kill_at_us;
  int port;
};
extern struct app_state APP;
int app_start(struct request *r, char **envp, char *err, size_t errn); /* 0 or -1 (err set) */
void app_stop(int64_t id, int64_t timeout_ms);
void app_on_exit(pid_t pid, int status);
void app_tick(void);          /* listen check, kill deadline */
void app_read_output(void);
int64_t app_next_deadline(void);
void app_forward_signal(int sig);
size_t ring_tail(char *out, size_t max);
void ring_clear(void);
pid_t spawn_process(char *const argv[], char *const envp[], const char *cwd, uid_t uid, gid_t gid,
                    int out_fd, int err_fd, char *err, size_t errn);
int started_sid(pid_t sid);

/* ---- exec (ops.c) ---- */
void exec_tick(void);
void exec_kill_all(void);    /* SIGKILL to every running command's process group */
int exec_on_exit(pid_t pid, int status);
int64_t exec_next_deadline(void);
void exec_poll_fds(struct pollfd *fds, int *n, int max);
void exec_on_readable(int fd);

/* ---- gate.c ---- */
void kmsg_open(void);
void gate_load_failure(void); /* a failed gate of an earlier agent of this boot */
int kmsg_fs_errors(json_t *out_array, char *first, size_t firstn); /* count of fs errors since last call */
json_t *gate_run(const char *canary_sha256, int *ok);
int write_canary(const unsigned char *data, size_t n, char *err, size_t errn);
int prepare_probe(void); /* the gate's probe block, allocated before a bake */
extern int gate_failed;
extern char gate_reason[512];

/* ---- volume.c ---- */
void volume_request(struct request *r); /* mount_volume, unmount_volume */
int volume_mounted(char *out, size_t n); /* a disk other than the root is mounted (guest only) */
void kill_user_processes(void);         /* ops.c: SIGKILL every user process but init and the agent */

/* ---- seal.c ---- */
void seal_keygen(void);
const char *seal_pubkey_b64(void);
/* Decrypt the sealed env into a NULL-terminated envp of "K=V" (zmalloc'd); 0 or -1 (err set). */
int seal_open_env(const struct sealed *s, char ***envp, char *err, size_t errn);
void envp_free(char **envp);

/* ---- init.c ---- */
int init_main(void);

#endif
