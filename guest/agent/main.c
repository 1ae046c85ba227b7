/* thaw-agent: PID 1 in a Thaw guest (init.c), or the agent alone on a host
 * for the conformance test:
 *   thaw-agent --channel-fd FD [--root DIR] [--kmsg FILE]
 * In that mode the channel is FD (a socket), guest paths are taken under DIR,
 * the kernel log is read from FILE, the clock is virtual (the host's is never
 * set) and scrub kills only processes this agent started. */
#include "agent.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sodium.h>

static void usage(void) {
  fprintf(stderr, "usage: thaw-agent --channel-fd FD [--root DIR] [--kmsg FILE]   (as PID 1: no arguments)\n");
  exit(2);
}

int main(int argc, char **argv) {
  json_set_alloc_funcs(zmalloc, zfree);
  if (sodium_init() < 0) { logc("THAW: libsodium failed to initialise"); return 1; }
  if (getpid() == 1) return init_main();
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--channel-fd") && i + 1 < argc) CFG.channel_fd = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--root") && i + 1 < argc) CFG.root = argv[++i];
    else if (!strcmp(argv[i], "--kmsg") && i + 1 < argc) CFG.kmsg = argv[++i];
    else usage();
  }
  if (CFG.channel_fd < 0) usage();
  return agent_main();
}
