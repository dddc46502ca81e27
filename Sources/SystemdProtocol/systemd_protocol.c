#define _GNU_SOURCE
#include "systemd_protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define JOURNAL_SOCKET "/run/systemd/journal/socket"

/* A datagram socket, blocking as libsystemd's are (a log line is not dropped because
 * journald is busy for a moment). */
static int datagram_socket(void) {
  return socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
}

/* The journal socket, opened once and shared by every logging thread (sendto on one
 * datagram socket from several threads is safe). */
static int journal_socket(void) {
  static int shared = -1;
  int fd = __atomic_load_n(&shared, __ATOMIC_ACQUIRE);
  if (fd >= 0) return fd;
  fd = datagram_socket();
  if (fd < 0) return -errno;
  int expected = -1;
  if (!__atomic_compare_exchange_n(&shared, &expected, fd, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    close(fd);
    return expected;
  }
  return fd;
}

static int address(const char *path, struct sockaddr_un *sa, socklen_t *len) {
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof(sa->sun_path)) return -EINVAL;
  memset(sa, 0, sizeof(*sa));
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, path, n);
  if (path[0] == '@') sa->sun_path[0] = 0; /* abstract namespace */
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  return 0;
}

int ca_sd_notify(const char *state) {
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !*path) return 0;
  struct sockaddr_un sa;
  socklen_t len;
  if (address(path, &sa, &len) < 0) return -EINVAL;
  int fd = datagram_socket();
  if (fd < 0) return -errno;
  ssize_t r = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
  int e = errno;
  close(fd);
  return r < 0 ? -e : 1;
}

int ca_sd_watchdog_enabled(uint64_t *usec) {
  const char *s = getenv("WATCHDOG_USEC");
  if (!s || !*s) return 0;
  const char *p = getenv("WATCHDOG_PID");
  if (p && *p) {
    char *end;
    errno = 0;
    unsigned long pid = strtoul(p, &end, 10);
    if (errno || *end || pid == 0) return -EINVAL;
    if ((pid_t)pid != getpid()) return 0;
  }
  char *end;
  errno = 0;
  unsigned long long u = strtoull(s, &end, 10);
  if (errno || *end || u == 0) return -EINVAL;
  *usec = (uint64_t)u;
  return 1;
}

/* The entry in the native protocol's wire form, in one malloc'ed buffer. */
static char *serialize(const struct iovec *fields, int n, size_t *out_len) {
  size_t total = 0;
  for (int i = 0; i < n; i++) total += fields[i].iov_len + 1 + 8 + 1;
  char *buf = malloc(total ? total : 1);
  if (!buf) return NULL;
  size_t at = 0;
  for (int i = 0; i < n; i++) {
    const char *f = fields[i].iov_base;
    size_t len = fields[i].iov_len;
    const char *eq = memchr(f, '=', len);
    if (!eq) continue; /* not NAME=value: skipped, as libsystemd refuses it */
    size_t name = (size_t)(eq - f);
    size_t vlen = len - name - 1;
    if (memchr(eq + 1, '\n', vlen)) {
      memcpy(buf + at, f, name);
      at += name;
      buf[at++] = '\n';
      uint64_t le = (uint64_t)vlen;
      for (int b = 0; b < 8; b++) buf[at++] = (char)((le >> (8 * b)) & 0xff);
      memcpy(buf + at, eq + 1, vlen);
      at += vlen;
    } else {
      memcpy(buf + at, f, len);
      at += len;
    }
    buf[at++] = '\n';
  }
  *out_len = at;
  return buf;
}

/* Too large for a datagram: the entry in a sealed memfd, its descriptor passed along. */
static int send_memfd(int sock, const struct sockaddr_un *sa, socklen_t salen, const char *buf, size_t len) {
  int mfd = memfd_create("compute-agent-journal", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  if (mfd < 0) return -errno;
  size_t done = 0;
  while (done < len) {
    ssize_t w = write(mfd, buf + done, len - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(mfd);
      return -e;
    }
    done += (size_t)w;
  }
  if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
    int e = errno;
    close(mfd);
    return -e;
  }
  union {
    struct cmsghdr align;
    char space[CMSG_SPACE(sizeof(int))];
  } control;
  memset(&control, 0, sizeof(control));
  struct msghdr mh;
  memset(&mh, 0, sizeof(mh));
  mh.msg_name = (void *)sa;
  mh.msg_namelen = salen;
  mh.msg_control = control.space;
  mh.msg_controllen = sizeof(control.space);
  struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &mfd, sizeof(int));
  ssize_t r = sendmsg(sock, &mh, MSG_NOSIGNAL);
  int e = errno;
  close(mfd);
  return r < 0 ? -e : 0;
}

int ca_journal_sendv(const struct iovec *fields, int n) {
  struct sockaddr_un sa;
  socklen_t salen;
  address(JOURNAL_SOCKET, &sa, &salen);
  size_t len;
  char *buf = serialize(fields, n, &len);
  if (!buf) return -ENOMEM;
  int sock = journal_socket();
  if (sock < 0) {
    free(buf);
    return sock;
  }
  int rc = 0;
  if (sendto(sock, buf, len, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0) {
    rc = -errno;
    if (errno == EMSGSIZE || errno == ENOBUFS) rc = send_memfd(sock, &sa, salen, buf, len);
  }
  free(buf);
  return rc;
}
