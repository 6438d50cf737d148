/* rules_int.h -- what the files of the rules module share: rules.c (the
 * VM, its limits, loading), rules_adapt.c (carrier adapters and the data
 * kept for routing), rules_route.c (routing) and rules_api.c (the host
 * functions rules call): the generation's layout and a few helpers.
 * Private: included by rules*.c only; everyone else uses rules.h.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_RULES_INT_H
#define CORE_RULES_INT_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "config.h"
#include "rules.h"
#include "util.h"

#define RULES_HOOK_CHUNK 1000                /* instructions between hook calls */
#define RULES_LOAD_BUDGET 50000000           /* instructions per file while loading */
#define RULES_LOAD_MEMORY ((size_t)64 << 20) /* cap until the config sets rule_memory */
#define RULES_GC_EVERY 64                    /* calls between incremental GC steps */
#define RULES_WHERE_MAX (LUA_IDSIZE + 24)
#define RULES_KEEP_SLOTS 512 /* adapters' data kept for routing: a ring, so never more */

enum rules_stop { RULES_STOP_NONE, RULES_STOP_BUDGET, RULES_STOP_MEMORY };

struct rules_handler {
    char *pattern; /* a type or glob; on({...}, ...): several, one per line */
    char *where;   /* "file:line" of its on() */
    char **names;  /* on(pattern, {endpoints}): the list (its fn sends the event whole) */
    size_t nnames;
};

/* A list handler's function runs fewer Lua instructions than this, so with
 * a budget at least this big it can never be stopped: doing its work in C
 * instead is the same outcome. */
#define RULES_LIST_MIN_BUDGET 16

/* One unset env() variable met while loading (all three strings owned). */
struct rules_missing_env {
    char *name, *where, *value; /* value: the placeholder given in its place */
};

struct rules {
    lua_State *L;
    const struct config_subscription *load_subs; /* rules_load_with's, while loading */
    size_t load_nsubs;
    struct config *cfg;
    char *config_path; /* as given */
    char *lua_dir;
    char *prelude_src; /* short_src of lua/waybill.lua: its frames are skipped in locations */
    int64_t loaded_at;

    /* the allocator's account */
    size_t mem_used, mem_limit;
    int mem_hit;     /* a growth was refused since the last arm */
    int mem_refused; /* ... and no growth succeeded after it (Lua raised) */

    /* the budget of the current call */
    int64_t budget, steps;
    int chunk;
    int stop;              /* enum rules_stop */
    const char *stop_kind; /* "rule stopped", "stopped while loading" */
    char stop_where[RULES_WHERE_MAX];
    const char *loading_file; /* display name of the file being loaded */

    /* env("NAME") calls without a default whose variable is unset, while
     * loading: serve refuses them all in one message; an offline load
     * (rules_load_offline) gives each a placeholder value instead. */
    struct rules_missing_env *missing;
    size_t nmissing;
    int placeholders;
    int config_only; /* the config file alone: no rule files, no adapters */

    struct rules_handler *handlers;
    size_t nhandlers;
    int handlers_ref;     /* registry: array of handler functions, parallel to handlers */
    int adapters_ref;     /* registry: source name -> adapter function */
    char **adapter_where; /* per cfg->sources entry: what to blame for its adapter */
    int api_ref;          /* registry: the table lua/waybill.lua returned */
    char **files;         /* rule file names while loading */
    size_t nfiles;

    /* routing */
    int routing;
    struct rules_send *plan;
    size_t nplan, capplan, plan_bytes;
    struct rules_match *matched; /* the event's matched handlers (rules_plan.matched) */
    size_t nmatched, capmatched;
    char *send_error; /* the first failed send/batch of this event */
    size_t max_output;
    unsigned calls;
    int64_t when_secs;  /* received_at_text's cache: the second ... */
    char when_base[24]; /* ... and its "YYYY-MM-DDTHH:MM:SS" */

    /* Decoded data kept from rules_adapt_keep until rules_route: the
     * registry table keep_ref maps token -> value while keep_token[token %
     * RULES_KEEP_SLOTS] == token (a ring: at most that many, the oldest
     * dropped). A token is never reused, here or in any other generation,
     * so a stale or foreign token just misses. The table holds only what is
     * kept (the collector walks no empty slots). */
    int keep_ref;
    uint64_t keep_token[RULES_KEEP_SLOTS];
    size_t keep_bytes[RULES_KEEP_SLOTS];
    size_t kept_bytes; /* their sum: at most rule_memory / 16 */
};

/* The generation a VM belongs to (kept in its extra space). */
static inline struct rules *rules_of(lua_State *L) {
    return *(struct rules **)lua_getextraspace(L);
}

/* A step of incremental collection every RULES_GC_EVERY calls. */
static inline void rules_maybe_gc(struct rules *r) {
    if (++r->calls % RULES_GC_EVERY == 0)
        lua_gc(r->L, LUA_GCSTEP, 0);
}

/* ---- rules.c ---- */

/* "file:line" of the innermost user frame (not the prelude, not C), or "". */
void rules_user_where(lua_State *L, struct rules *r, char *out, size_t outlen);

/* Charges the current call's budget for work done in C (raises when it is
 * spent). [-0, +0, e] */
void rules_budget_charge(lua_State *L);

/* Arms the limits for a call: budget instructions (at least 1), no stop,
 * no memory refusal yet; kind names a stop in messages ("rule stopped",
 * "stopped while loading"). */
void rules_limits_arm(struct rules *r, int64_t budget, const char *kind);

/* Classifies a failed call (status from lua_pcall, the error at the top)
 * into "file:line: message" in err. where blames the handler, adapter or
 * file when the error itself carries no location. */
void rules_call_error(struct rules *r, int status, const char *where, char *err, size_t errlen);

/* Back to a clean state after a failed call: empty stack, no stop, no
 * pending send error; after a memory stop, the garbage collected at once. */
void rules_recover(struct rules *r);

/* ---- rules_adapt.c ---- */

/* Pushes token's kept value and forgets it (push), or just forgets it;
 * returns 0, or -1 (nothing pushed) when this generation does not hold it.
 * Never allocates. [-0, +(0|1), -] */
int rules_keep_take(struct rules *r, uint64_t token, int push);

/* ---- rules_api.c ---- */

/* Pushes the host table the prelude receives (send, batch, subscribers,
 * where, env, readfile, log, ...). [-0, +1, m] */
void rapi_push_host(lua_State *L, struct rules *r);

/* Empties the plan of the event being routed. */
void rapi_plan_reset(struct rules *r);

/* Adds one delivery to the plan (everything copied). Returns 0, -1 when
 * out of memory, -2 past the plan's byte limit. */
int rapi_plan_add(struct rules *r, const char *endpoint, const char *body, size_t len,
                  const char *ctype, const char *headers_json, int64_t window_ms);

/* Frees what s owns. */
void rapi_send_clear(struct rules_send *s);

/* Pushes the text of the file at path (read into Lua memory, so a memory
 * error can't leak it) and returns 0 with its length in *lenp, or returns
 * -1 with errno and nothing pushed. [-0, +(0|1), m] */
int rapi_push_file(lua_State *L, const char *path, size_t *lenp);

/* ---- rules_key.c ---- */

/* Sets the order key of every send of r->plan whose endpoint is ordered by
 * key, from the fresh event table at ev. A key function that fails leaves
 * its sends without a key (key_missing) and its first error, new, in
 * *key_error. Returns 0, or -1 when out of memory. */
int rules_keys(struct rules *r, lua_State *L, int ev, char **key_error);

/* 1 when handler h runs for an event of type: one of its patterns matches
 * it, and waybill's own events (SPEC 7) only by a pattern naming them
 * ("waybill.*"), so a catch-all "*" does not send them to a merchant's
 * endpoint unasked. */
int rules_handler_matches(const struct rules_handler *h, const char *type);

#endif
