/* subs.h -- subscriptions made through the admin API in ShipEngine's shape
 * (POST /v1/environment/webhooks {url, event}), kept in the store and
 * mirrored here for the loop. Each one is an endpoint named by its id
 * ("se-...", ShipEngine's id shape; a store from before keeps its "sub_..."
 * ids): signed `standard` with its own whsec_ secret (rotated through
 * /api/subscriptions/{id}/rotate), retried with the default preset.
 * Whoever owns the config (the app) merges them into its endpoint table
 * (subs_config_list, config_set_subscriptions) when told of a change, so
 * rules reach them with subscribers(type) and send(), and delivery resolves
 * the name.
 * Invariant: the mirror holds only what the store committed.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_SUBS_H
#define CORE_SUBS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "store.h"

struct subs;

/* One subscription; owned by the registry. */
struct subs_entry {
    char *id, *event, *pattern, *url, *secret;
    int64_t created_at;
    struct config_endpoint ep; /* what delivery sees; ep.name == id */
};

/* Loads every stored subscription. changed(arg, subs) (may be NULL) runs once
 * loaded and after every later change of the list (add, url, remove, and
 * at subs_free with the list empty, before any entry is freed). Returns
 * new, or NULL with a reason in err. */
struct subs *subs_new(struct store *s, void (*changed)(void *arg, const struct subs *subs),
                      void *arg, char *err, size_t errlen);

/* NULL is a no-op. */
void subs_free(struct subs *subs);

/* The subscriptions as config endpoints (see config_set_subscriptions):
 * *out new (free()), its entries borrowed until the next change. Returns
 * 0, or -1 when out of memory. */
int subs_config_list(const struct subs *subs, struct config_subscription **out, size_t *n);

/* Maps a ShipEngine event name or a waybill type/glob to the pattern it
 * stands for (track -> tracking.*, batch -> batch.completed, rate ->
 * rate.updated, carrier_connected -> carrier.connected,
 * sales_orders_imported -> order.imported, order_source_refresh_complete
 * -> store.refreshed, report_complete -> report.completed). Returns 0, or -1 with a reason in err
 * when event is neither. */
int subs_pattern(const char *event, char *out, size_t outlen, char *err, size_t errlen);

/* Lookups; NULL when absent. Borrowed until the entry is removed. */
const struct subs_entry *subs_find(const struct subs *subs, const char *id);
const struct subs_entry *subs_find_pattern(const struct subs *subs, const char *pattern);

/* Mirror a committed change. Return 0, or -1 when out of memory. */
int subs_add(struct subs *subs, const struct store_sub *sub);
int subs_set_url(struct subs *subs, const char *id, const char *url);
int subs_set_secret(struct subs *subs, const char *id, const char *secret);
void subs_remove(struct subs *subs, const char *id);

/* A shared store (store_shared): reads the stored subscriptions from s
 * and makes the mirror the same (added, url or secret changed, removed
 * through another instance), with changed() as for a local change;
 * nothing is written. No-op while a poll is out; an answer older than a
 * change mirrored meanwhile is dropped. Call it once a second. Returns 0,
 * or -1 when the read could not be made. */
int subs_poll(struct subs *subs, struct store *s);

/* The entries, oldest first: entry i of subs_count(); borrowed until the
 * next change. */
size_t subs_count(const struct subs *subs);
const struct subs_entry *subs_at(const struct subs *subs, size_t i);

#endif
