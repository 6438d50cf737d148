/* subs.h -- subscriptions made through the admin API in ShipEngine's shape
 * (POST /v1/environment/webhooks {url, event}), kept in the store and
 * mirrored here for the loop. Each one is an endpoint named by its id
 * ("sub_..."): signed `standard` with its own whsec_ secret, retried with the
 * default preset. subs_new installs the config_extra hook, so rules reach
 * them with subscribers(type) and send(), and delivery resolves the name.
 * Invariant: the mirror holds only what the store committed.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_SUBS_H
#define CORE_SUBS_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "config.h"
#include "store.h"

struct subs;

/* One subscription; owned by the registry. */
struct subs_entry {
    char *id, *event, *pattern, *url, *secret;
    int64_t created_at;
    struct config_endpoint ep; /* what delivery sees; ep.name == id */
};

/* Loads every stored subscription and installs the endpoint hook. Returns
 * new, or NULL with a reason in err. */
struct subs *subs_new(struct store *s, char *err, size_t errlen);

/* Removes the hook and frees; NULL is a no-op. */
void subs_free(struct subs *subs);

/* Maps a ShipEngine event name or a waybill type/glob to the pattern it
 * stands for (track -> tracking.*, batch -> batch.completed, rate ->
 * rate.updated, carrier_connected -> carrier.connected,
 * sales_orders_imported -> order.imported, order_source_refresh_complete
 * -> store.refreshed). Returns 0, or -1 with a reason in err when event is
 * neither. */
int subs_pattern(const char *event, char *out, size_t outlen, char *err, size_t errlen);

/* 1 when type matches glob pattern ('*' matches any run of characters). */
int subs_glob_match(const char *pattern, const char *type);

/* Lookups; NULL when absent. Borrowed until the entry is removed. */
const struct subs_entry *subs_find(const struct subs *subs, const char *id);
const struct subs_entry *subs_find_pattern(const struct subs *subs, const char *pattern);

/* Mirror a committed change. Return 0, or -1 when out of memory. */
int subs_add(struct subs *subs, const struct store_sub *sub);
int subs_set_url(struct subs *subs, const char *id, const char *url);
void subs_remove(struct subs *subs, const char *id);

/* {webhook_id, url, event} (+ secret when with_secret) as new JSON. */
json_t *subs_entry_json(const struct subs_entry *e, int with_secret);

/* Every entry as a new JSON array (without secrets). */
json_t *subs_list_json(const struct subs *subs);

#endif
