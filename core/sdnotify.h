/* sdnotify.h -- systemd's readiness protocol (sd_notify(3)) without
 * libsystemd: one datagram of "KEY=VALUE" lines to the unix socket named by
 * $NOTIFY_SOCKET (a path, or "@name" in the abstract namespace).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_SDNOTIFY_H
#define CORE_SDNOTIFY_H

/* Sends state (e.g. "READY=1\nSTATUS=serving") to $NOTIFY_SOCKET. Returns
 * 1 sent, 0 when NOTIFY_SOCKET is unset (not run by systemd as
 * Type=notify), -1 when it could not be sent (errno set). */
int sdnotify_send(const char *state);

#endif
