/* sdnotify.c -- systemd's notify protocol, as sd_notify(3) documents it:
 * the state is one datagram, written to the AF_UNIX socket named by
 * $NOTIFY_SOCKET; a leading '@' names an abstract socket (a NUL byte in
 * the address).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sdnotify.h"

int sdnotify_send(const char *state) {
    const char *name = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = name ? strlen(name) : 0;
    socklen_t salen;
    ssize_t sent;
    int fd, saved;

    if (!name || !*name)
        return 0;
    if ((name[0] != '/' && name[0] != '@') || len < 2 || len >= sizeof sa.sun_path) {
        errno = EINVAL;
        return -1;
    }
    memcpy(sa.sun_path, name, len);
    if (name[0] == '@')
        sa.sun_path[0] = '\0';
    /* an abstract name is exactly its bytes; a path ends with its NUL */
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (name[0] == '/'));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    saved = errno;
    close(fd);
    errno = saved;
    return sent == (ssize_t)strlen(state) ? 1 : -1;
}
