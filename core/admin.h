/* admin.h -- the admin API listener (SPEC section 8).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_ADMIN_H
#define CORE_ADMIN_H

#include <stddef.h>

struct gateway;
struct admin;

/* Listens on listen ("host:port") and serves the admin routes of gw's
 * current config. Returns new, or NULL with a reason in err. */
struct admin *admin_new(struct gateway *gw, const char *listen, char *err, size_t errlen);

/* Closes the listener; NULL is a no-op. */
void admin_free(struct admin *adm);

#endif
