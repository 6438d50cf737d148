/* rules.h -- one generation of configuration and rules in a sandboxed Lua 5.4 VM.
 * A generation is built whole (config file, shipped lua/ library, every rule
 * file) and then only read; reload builds a new one and swaps the pointer, so
 * a failed reload leaves the old generation untouched. Handler calls run
 * under an instruction budget and a memory cap; no Lua pointer outlives a
 * call (strings are copied out).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_RULES_H
#define CORE_RULES_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct rules;

/* Builds a generation from the config file at config_path. lua_dir is the
 * folder of waybill's shipped Lua library (holding waybill.lua and
 * sources/). Returns a new generation, or NULL with "file:line: message"
 * in err (or "file: message" when no line applies). */
struct rules *rules_load(const char *config_path, const char *lua_dir, char *err, size_t errlen);

/* rules_load with subscriptions (see config_set_subscriptions) merged into
 * the config before the rules load, so rules that name them load as they
 * would once merged. subs is borrowed for the call. */
struct rules *rules_load_with(const char *config_path, const char *lua_dir,
                              const struct config_subscription *subs, size_t nsubs, char *err,
                              size_t errlen);

/* rules_load for commands that only read the config (check, route, the
 * admin client): an env("NAME") without default whose variable is unset
 * gets a placeholder value (a valid whsec_ key) instead of failing the
 * load. note gets "unset env replaced by placeholders: A, B", or "" when
 * every variable was set. (rules_load refuses unset variables, all of them
 * in one message.) config_only: the config file alone, no rule file nor
 * adapter (the admin client, which must work while a rule is broken); such
 * a generation routes nothing. */
struct rules *rules_load_offline(const char *config_path, const char *lua_dir, int config_only,
                                 char *note, size_t notelen, char *err, size_t errlen);

/* The env variable whose placeholder value is, or NULL when value is not a
 * placeholder of r's offline load. */
const char *rules_placeholder_env(const struct rules *r, const char *value);

/* Replaces the subscriptions merged into r's config (config_set_subscriptions).
 * Returns 0, or -1 when out of memory (the old ones stay). */
int rules_set_subscriptions(struct rules *r, const struct config_subscription *v, size_t n);

/* Frees the generation, its VM and its config; NULL is a no-op. */
void rules_free(struct rules *r);

/* The configuration of this generation; borrowed, valid until rules_free. */
const struct config *rules_config(const struct rules *r);

/* Unix ms when this generation was built. */
int64_t rules_loaded_at(const struct rules *r);

/* ---- adapters: carrier body -> normalized event ---- */

/* What an adapter made of a carrier body. Every field is new (caller frees
 * with rules_event_clear); any may be NULL but type and data_json. */
struct rules_event {
    char *source_id;  /* the carrier's event id, NULL if the adapter found none */
    char *type;       /* normalized type, e.g. "tracking.delivered" */
    char *created_at; /* carrier's timestamp text, or NULL */
    char *data_json;  /* compact JSON of the event's data */
    /* rules_adapt_keep: the token of data_json's decoded form, kept in the
     * generation for rules_route (rules_input.data_token); 0 when none.
     * Not memory: a generation keeps a bounded number, so one never routed
     * is only a slot until reused (rules_data_drop frees it sooner). */
    uint64_t data_token;
    char *shipment_json; /* compact JSON of the event's shipment (SPEC 4), or NULL */
};

#define RULES_EBADJSON (-2)

/* Runs src's adapter over body (the raw request body, len bytes) with the
 * request headers given as a JSON object text (lowercase names).
 * Returns 0 and fills out; RULES_EBADJSON with a one-line reason when the
 * body is not a JSON object or array ("invalid JSON at line 1 column 7:
 * ..."); -1 with "file:line: message" when the adapter failed. */
int rules_adapt(struct rules *r, const struct config_source *src, const char *body, size_t len,
                const char *headers_json, struct rules_event *out, char *err, size_t errlen);

/* rules_adapt, also keeping (when there is room) the handler's form of the
 * event's data, the table decoding data_json gives, made while encoding it,
 * so rules_route needs not decode it again: out->data_token. The ingest
 * path; anything routed from stored JSON uses rules_adapt. */
int rules_adapt_keep(struct rules *r, const struct config_source *src, const char *body, size_t len,
                     const char *headers_json, struct rules_event *out, char *err, size_t errlen);

/* Frees the kept data of token when r holds it (else nothing: a token of
 * another generation, already taken, or 0). */
void rules_data_drop(struct rules *r, uint64_t token);

void rules_event_clear(struct rules_event *ev);

/* ---- routing ---- */

/* A stored, normalized event as the rules see it (all borrowed). The Lua
 * table handlers receive has id, type, source, source_id, created_at,
 * received_at (RFC 3339), shipment (when the adapter gave one), data, and, not encoded when the
 * event is sent whole, raw and headers. */
struct rules_input {
    const char *id;
    const char *source;
    const char *source_id;
    const char *type;
    const char *created_at;
    int64_t received_at_ms;
    const char *data_json;
    const char *raw;
    size_t raw_len;
    const char *headers_json;
    /* Set when data_json is exactly what rules_adapt encoded (the ingest
     * path): compact, keys sorted, valid. A handler given as an endpoint
     * list may then send the event with data_json's text reused, and the
     * handler's event table is built only when a function handler runs.
     * Stored events (recovery, replays) leave it 0. */
    int data_canonical;
    /* rules_event.data_token from rules_adapt_keep, or 0. rules_route uses
     * the kept table for the event's data when this generation holds it
     * (else decodes data_json) and frees it either way. */
    uint64_t data_token;
    const char *shipment_json; /* the adapter's shipment as JSON, or NULL */
};

/* One delivery a handler asked for. Every pointer is new. */
struct rules_send {
    char *endpoint;
    char *payload; /* bytes to POST (table payloads encoded as compact JSON) */
    size_t payload_len;
    char *content_type; /* "application/json" unless the send options set one */
    char *headers_json; /* extra headers as a JSON object, or NULL */
    int64_t window_ms;  /* 0: send now; > 0: batch into a window of this length */
    char *key;          /* the order key when the endpoint is ordered by key, or NULL */
    int key_missing;    /* ordered by key, but the event had none: sent unordered */
    size_t match;       /* index in the plan's matched: the handler that sent it */
};

/* A handler whose pattern matched the event (borrowed from the generation
 * that routed it: valid while it lives). */
struct rules_match {
    const char *where;   /* "file:line" of its on() */
    const char *pattern; /* its pattern (on({...}): one per line) */
    int failed;          /* it failed: none of its sends are in the plan */
};

struct rules_plan {
    struct rules_send *sends;
    size_t n;
    char *key_error; /* "file:line: message" of a key function that failed, or NULL */
    /* The handlers that matched, in the order they ran (also when routing
     * failed); borrowed from the generation, valid until its next
     * rules_route: record them before routing another event. */
    const struct rules_match *matched;
    size_t nmatched;
};

/* Runs every handler matching ev->type (file order, then definition order).
 * Handlers are independent: one that fails (an error, its budget, the VM's
 * memory cap, a send to an unknown endpoint) contributes none of its sends
 * and the others run. Returns 0 with the plan when every handler ran (n ==
 * 0 means unrouted); 1 when some failed and the others' sends are in the
 * plan ("partial"); -1 when handlers failed and nothing is left to send
 * ("rule_error"), the plan empty. On 1 and -1, err holds "file:line:
 * message" of each failed handler, joined by "; ". */
int rules_route(struct rules *r, const struct rules_input *ev, struct rules_plan *out, char *err,
                size_t errlen);

void rules_plan_clear(struct rules_plan *plan);

#endif
