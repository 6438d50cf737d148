/* ingest.h -- the only way an event enters waybill: a carrier's verified
 * request, one of waybill's own operational events, an admin test event,
 * or a replay of a stored event. Each is routed through the current rules
 * and written with what they decided in one call into the store's open
 * group (one trip per event); a carrier is answered once it is durable.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_INGEST_H
#define CORE_INGEST_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

struct config_endpoint;
struct deliver;
struct ingest;
struct route;
struct rules;
struct rules_event;
struct store;
struct stream;

/* What ingest works with; all borrowed, and must outlive it. */
struct ingest_deps {
    struct store *store;
    struct route *route;
    struct deliver *deliver;
    struct rules *const *rules; /* the current generation (swapped whole on reload) */
    struct stream *stream;      /* the live feed: stored events; NULL = none */
};

/* New, or NULL when out of memory. */
struct ingest *ingest_new(const struct ingest_deps *deps);

/* NULL is a no-op. Every ingest_carrier callback must have run (the store
 * drained) before. */
void ingest_free(struct ingest *g);

/* A carrier's request, verified and read by its source's adapter. */
struct ingest_carrier {
    const char *source;     /* the source's name; copied */
    struct rules_event *ev; /* source_id, type, created_at, data_json: borrowed */
    char *headers_json;     /* taken (NULLed) */
    const char *body;       /* as received; borrowed */
    size_t len;
    int64_t received_at; /* Unix ms */
    int adapted;         /* 0: the adapter failed; stored as rule_error with error */
    const char *error;   /* the adapter's error, or NULL */
    uint64_t data_token; /* the adapter's data kept for routing; taken (zeroed) */
};

/* Runs once the carrier's event and its routing are durable (ok = 1) or
 * their group failed (ok = 0): id is the event's (the first copy's for a
 * duplicate). */
typedef void (*ingest_done_fn)(void *arg, int ok, const char *id, int duplicate,
                               const char *source);

/* Routes c's event (an adapter's failure: status rule_error) and stores it
 * with its routing in the open group, then calls done(arg, ...) from the
 * loop once the write's result is known and its group durable (ok = 1;
 * duplicate when (source, source_id) was stored already: nothing written,
 * id the first copy's) or failed (ok = 0: the store is unavailable).
 * Returns 0 (done runs exactly once, never inside this call), or -1 with a
 * reason in err when out of memory (done never runs). c's headers_json and
 * data_token are taken in every case; ev's strings as its comment says. */
int ingest_carrier(struct ingest *g, struct ingest_carrier *c, ingest_done_fn done, void *arg,
                   char *err, size_t errlen);

/* Routes and stores one of waybill's own events (SPEC section 7: source
 * "waybill", type e.g. "waybill.delivery.failed") in the open group, in
 * one write.
 * The shape of deliver_notify_fn (arg is the ingest); takes the reference
 * to data. Failures are logged. */
void ingest_emit(void *arg, const char *type, json_t *data);

/* A test event of type with data (borrowed) straight to endpoint ep, the
 * rules bypassed (POST /api/endpoints/{name}/test), stored like any event
 * so its delivery has a log and can be retried: source "waybill.test",
 * envelope {id, type, source, source_id, created_at, received_at, data,
 * test: true}. Its id goes to id (UTIL_ID_MAX bytes). Returns 0 (the
 * caller answers after the group's commit, whose ok says whether it was
 * stored), or -1 with a reason in err (out of memory). */
int ingest_test(struct ingest *g, const struct config_endpoint *ep, const char *type, json_t *data,
                char *id, size_t idlen, char *err, size_t errlen);

/* Called with a replay's outcome: rc 1 routed again (the new deliveries
 * are in the open group: answer after its commit), 0 unknown id, -1 a
 * store error (err says why; borrowed for the call). */
typedef void (*ingest_replay_fn)(void *arg, int rc, const char *err);

/* Reads stored event id and routes it again with the current rules (new
 * deliveries; the old ones keep their history), then calls fn(arg, ...)
 * from the loop, never inside this call. Returns 0 (fn runs exactly once),
 * or -1 when out of memory (fn never runs). */
int ingest_replay(struct ingest *g, const char *id, ingest_replay_fn fn, void *arg);

#endif
