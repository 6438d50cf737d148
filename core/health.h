/* health.h -- endpoint state (SPEC section 7): which endpoints are
 * disabled, by a 410, by disable_after or by the admin API, kept in the
 * store so a restart keeps them disabled; every attempt's outcome counted
 * per endpoint; the operational events waybill.endpoint.disabled and
 * waybill.endpoint.enabled.
 * Invariant: the disabled set in memory is what the store holds once the
 * open group commits; a rolled-back group makes it read the store again;
 * on a shared store, a change another instance stored is in it within
 * about a second (health_poll).
 * Only the loop thread touches a struct health.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_HEALTH_H
#define CORE_HEALTH_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "config.h"
#include "store.h"

struct health;

/* Endpoint state kept in s (borrowed, must outlive it); the stored
 * disabled flags are read now (again at health_set_config when that
 * failed). Returns new, or NULL with a reason in err. */
struct health *health_new(struct store *s, char *err, size_t errlen);

/* Uses cfg's endpoints from now on (borrowed until the next call or
 * health_free). An endpoint the previous config had `enabled = false` and
 * cfg enables gets its held deliveries back as pending, unless it is
 * disabled in the store too. */
void health_set_config(struct health *h, const struct config *cfg);

/* Frees; NULL is a no-op. */
void health_free(struct health *h);

/* 1 when name was disabled by a 410, disable_after or the admin API (and
 * not enabled since), else 0. Deliveries routed to it are created held. */
int health_endpoint_disabled(const struct health *h, const char *name);

/* Disables (reason may be NULL) or enables name, in the open group: its
 * pending deliveries become held, or its held ones pending and due now.
 * Emits waybill.endpoint.disabled / .enabled and tells the change hook.
 * Doing what is already so is a no-op. Returns 0, or -1 with a reason
 * (unknown endpoint, store error). */
int health_endpoint_set_disabled(struct health *h, const char *name, int disabled,
                                 const char *reason, char *err, size_t errlen);

/* What one attempt said about its endpoint. */
enum health_verdict {
    HEALTH_OK,     /* delivered */
    HEALTH_FAILED, /* any failure but a 410 */
    HEALTH_GONE    /* 410 Gone */
};

/* Counts an attempt to cep (error: what failed, NULL when delivered) at
 * now (Unix ms) in the open group, and applies the rules: a 410 disables
 * the endpoint at once (announced as by health_endpoint_set_disabled; the
 * change hook is not told: the caller holds the answer); every attempt
 * failing for disable_after disables it once the count's answer (the
 * stored start of the run of failures) came back from the store, and then
 * the change hook is told. Returns 1 when the endpoint is disabled now
 * (before or by this attempt's 410), else 0. */
int health_attempt(struct health *h, const struct config_endpoint *cep, enum health_verdict v,
                   const char *error, int64_t now);

/* Operational events (waybill.endpoint.disabled, .enabled) go to
 * fn(arg, type, data) from the loop; fn takes the reference to data.
 * NULL fn: dropped. */
typedef void (*health_notify_fn)(void *arg, const char *type, json_t *data);
void health_set_notify(struct health *h, health_notify_fn fn, void *arg);

/* Told when endpoint state changed outside health_attempt: name was
 * disabled (1) or enabled (0) by health_endpoint_set_disabled; or name is
 * NULL when the store was read again after a rolled-back group (any
 * endpoint may have changed). Called from the loop, inside the call that
 * made the change (for disable_after: inside the store's answer to the
 * attempt's count). One hook; NULL removes it. */
typedef void (*health_change_fn)(void *arg, const char *name, int disabled);
void health_set_change_hook(struct health *h, health_change_fn fn, void *arg);

/* A shared store (store_shared): reads the stored states and follows the
 * enables and disables another instance made (the change hook is told;
 * nothing is written or announced). No-op while a poll or a change of
 * this instance is on its way; an answer older than a change made here
 * meanwhile is dropped. Call it once a second. Returns 0, or -1 when the
 * read could not be made. */
int health_poll(struct health *h);

/* A delay for the log and for reasons: "850ms", "12s", "5m", "2h". */
const char *health_fmt_delay(int64_t ms, char *buf, size_t len);

#endif
