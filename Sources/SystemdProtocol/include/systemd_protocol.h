#ifndef COMPUTE_AGENT_SYSTEMD_PROTOCOL_H
#define COMPUTE_AGENT_SYSTEMD_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* systemd's two datagram protocols, spoken directly (no libsystemd: it would map
 * libgcrypt, liblz4, libzstd, liblzma and libcap into the agent for three calls).
 * Both are documented, stable interfaces: sd_notify(3) and systemd.journal-fields(7) /
 * "Native Journal Protocol". */

/* sd_notify(0, state): one datagram to $NOTIFY_SOCKET (a path, or '@' for the abstract
 * namespace). Returns 1 if sent, 0 without $NOTIFY_SOCKET, -errno on failure. */
int ca_sd_notify(const char *state);

/* sd_watchdog_enabled(0, &usec): $WATCHDOG_USEC, if $WATCHDOG_PID is unset or this
 * process. Returns 1 and sets *usec when enabled, 0 when not, -EINVAL when malformed. */
int ca_sd_watchdog_enabled(uint64_t *usec);

/* sd_journal_sendv: one entry to /run/systemd/journal/socket. Each iovec is one field
 * "NAME=value"; a value holding a newline goes in the binary-safe form
 * (NAME\n<le64 length><value>\n). An entry too large for one datagram goes in a sealed
 * memfd passed with SCM_RIGHTS, as libsystemd does. Returns 0 or -errno. */
int ca_journal_sendv(const struct iovec *fields, int n);

#endif
