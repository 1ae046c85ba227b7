/* A static HTTP server for VM tests: the only file of a scratch root.
 * GET  -> {"pid":N,"who":"$WHO","marker":"<content of $MARKER or null>","uid":N,"now_us":N}
 * GET /ls/PATH -> the names in folder /PATH, one JSON array
 * POST -> writes the body to $MARKER (default /marker, fsync), answers 201.
 * Listens on 0.0.0.0:$PORT. No libc from any image: built with gcc -static. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void reply(int c, int status, const char *body) {
  char head[256];
  int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                   status, status == 201 ? "Created" : "OK", strlen(body));
  if (write(c, head, (size_t)n) < 0 || write(c, body, strlen(body)) < 0) {}
}

static void json_escape(const char *s, char *out, size_t n) {
  size_t o = 0;
  for (; *s && o + 7 < n; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') { out[o++] = '\\'; out[o++] = (char)ch; }
    else if (ch < 0x20) o += (size_t)snprintf(out + o, n - o, "\\u%04x", ch);
    else out[o++] = (char)ch;
  }
  out[o] = 0;
}

int main(void) {
  const char *port = getenv("PORT");
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port ? port : "8080")), .sin_addr.s_addr = INADDR_ANY };
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) { perror("listen"); return 1; }
  fprintf(stderr, "static-http listening on %s\n", port ? port : "8080");
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    char req[65536];
    size_t len = 0;
    char *body = NULL;
    for (;;) { /* read headers, then the body by Content-Length */
      ssize_t n = read(c, req + len, sizeof req - 1 - len);
      if (n <= 0) break;
      len += (size_t)n;
      req[len] = 0;
      char *end = strstr(req, "\r\n\r\n");
      if (!end) continue;
      body = end + 4;
      char *cl = strcasestr(req, "content-length:");
      size_t want = cl ? (size_t)atol(cl + 15) : 0;
      if ((size_t)(req + len - body) >= want) { body[want] = 0; break; }
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    const char *mpath = getenv("MARKER") ? getenv("MARKER") : "/marker";
    if (!strncmp(req, "GET /ls/", 8)) {
      char dir[1024] = "/", out[8192] = "[";
      sscanf(req + 8, "%1000[^ ?]", dir + 1);
      DIR *d = opendir(dir);
      struct dirent *e;
      size_t o = 1;
      while (d && (e = readdir(d)) && o + 300 < sizeof out) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
        o += (size_t)snprintf(out + o, sizeof out - o, "%s\"%s\"", o > 1 ? "," : "", e->d_name);
      }
      if (d) closedir(d);
      snprintf(out + o, sizeof out - o, "]");
      reply(c, 200, out);
    } else if (!strncmp(req, "POST", 4)) {
      int fd = open(mpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) { if (write(fd, body ? body : "", body ? strlen(body) : 0) < 0) {} fsync(fd); close(fd); }
      reply(c, 201, "{\"ok\":true}");
    } else {
      char marker[1024] = "", m[2048], who[1024];
      int fd = open(mpath, O_RDONLY);
      ssize_t n = fd >= 0 ? read(fd, marker, sizeof marker - 1) : -1;
      if (fd >= 0) close(fd);
      if (n >= 0) marker[n] = 0;
      json_escape(getenv("WHO") ? getenv("WHO") : "", who, sizeof who);
      if (n >= 0) { char e[2000]; json_escape(marker, e, sizeof e); snprintf(m, sizeof m, "\"%s\"", e); } else snprintf(m, sizeof m, "null");
      char out[4096];
      snprintf(out, sizeof out, "{\"pid\":%d,\"who\":\"%s\",\"marker\":%s,\"uid\":%d,\"now_us\":%lld}", (int)getpid(), who, m, (int)getuid(),
               (long long)tv.tv_sec * 1000000 + tv.tv_usec);
      reply(c, 200, out);
    }
    close(c);
  }
}
