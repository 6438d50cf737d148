/* app.c -- the running gateway (see app.h): builds every module on one
 * event loop and wires them, reloads config and rules (SIGHUP, POST
 * /api/reload) keeping the old generation on error, and stops gracefully
 * on SIGTERM/SIGINT.
 * Invariant: only the loop thread touches it; rules is swapped whole on
 * reload and never NULL while serving; modules are freed only after the
 * store has run every callback they registered.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "admin.h"
#include "app.h"
#include "batch.h"
#include "config.h"
#include "deliver.h"
#include "health.h"
#include "housekeep.h"
#include "http.h"
#include "httpc.h"
#include "inbound.h"
#include "ingest.h"
#include "log.h"
#include "route.h"
#include "sdnotify.h"
#include "rules.h"
#include "store.h"
#include "stream.h"
#include "subs.h"
#include "util.h"

struct app {
    struct event_base *base;
    char *config_path;
    char *lua_dir;
    struct rules *rules; /* current generation, owned; modules read it through &rules */
    struct store *store;
    struct subs *subs;
    struct stream *stream; /* the live feed (GET /api/stream) */
    struct httpc *httpc;   /* the one HTTP client: deliveries, probes, JWKS */
    struct health *health; /* endpoint state */
    struct deliver *deliver;
    struct housekeep *housekeep; /* retention and recovery sweeps */
    struct route *route;
    struct batch *batch;
    struct ingest *ingest;
    struct inbound *inbound;
    struct admin *admin;
    struct event *sighup, *sigterm, *sigint;
    struct event *poll; /* a shared store: health_poll and subs_poll, every second */
    int64_t started_at; /* Unix ms */
    int reloads, reload_failures;
    char reload_error[512]; /* the last reload's error, "" when it succeeded */
    int stopping;
    char *pidfile;           /* written by app_new, removed by app_free */
    int listen_fd, admin_fd; /* bound first; -1 once handed to inbound / admin */
};

/* ---- subscriptions ---- */

/* The subscriptions changed: merged into the current config's endpoint
 * table (there is no other way for lookups to see them). */
static void app_subs_changed(void *arg, const struct subs *subs) {
    struct app *a = arg;
    struct config_subscription *v = NULL;
    size_t n = 0;

    if (!a->rules)
        return;
    if (subs_config_list(subs, &v, &n) < 0 || rules_set_subscriptions(a->rules, v, n) < 0) {
        /* The old list may point at an entry being removed: drop them all
         * (n = 0 allocates nothing, so this cannot fail) rather than keep
         * pointers into freed memory. */
        rules_set_subscriptions(a->rules, NULL, 0);
        log_msg(LOG_ERROR, "subscriptions changed but could not be merged (out of memory); "
                           "rules and delivery see none until the next change or reload");
    }
    free(v);
}

/* ---- another instance's admin actions (a shared store) ---- */

/* Once a second: endpoint states and subscriptions as the store has them
 * (health.c and subs.c say why polling). Retries and replays need nothing
 * here: their rows are found by the scheduler's watchdog read. */
static void on_poll(evutil_socket_t fd, short what, void *arg) {
    struct app *a = arg;
    UNUSED(fd);
    UNUSED(what);
    if (a->stopping)
        return;
    if (health_poll(a->health) < 0)
        log_msg(LOG_WARN, "reading endpoint states: out of memory; trying again in a second");
    if (subs_poll(a->subs, a->store) < 0)
        log_msg(LOG_WARN, "reading subscriptions: out of memory; trying again in a second");
}

/* Starts the poll on a shared store; nothing on SQLite (one process).
 * Returns 0, or -1 with err set. */
static int app_poll_start(struct app *a, char *err, size_t errlen) {
    const struct timeval second = {1, 0};

    if (!store_shared(a->store))
        return 0;
    if (!(a->poll = event_new(a->base, -1, EV_PERSIST, on_poll, a)) ||
        event_add(a->poll, &second) < 0) {
        snprintf(err, errlen, "cannot start the shared store's poll");
        return -1;
    }
    return 0;
}

/* ---- reload ---- */

static int differs(const char *x, const char *y) {
    if (!x || !y)
        return x != y;
    return strcmp(x, y) != 0;
}

/* Tells systemd (Type=notify, $NOTIFY_SOCKET) where the gateway is; a
 * failed send is logged, nothing else changes. */
static void app_notify(const char *state) {
    if (sdnotify_send(state) < 0)
        log_msg(LOG_WARN, "sd_notify to $NOTIFY_SOCKET failed: %s", strerror(errno));
}

/* systemd's reload protocol: RELOADING=1 with the monotonic clock in
 * microseconds, then READY=1 once done (failed or not: the gateway serves
 * on either way). */
static void app_notify_reloading(void) {
    char state[96];
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(state, sizeof state, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    app_notify(state);
}

/* Builds a new rules generation from the config file and swaps it in. On
 * failure the old one stays, the error is kept for /api/status and copied
 * to err. Returns 0 or -1. */
static int app_reload(void *arg, char *err, size_t errlen) {
    struct app *a = arg;
    struct config_subscription *subs = NULL;
    size_t nsubs = 0;
    struct rules *fresh = NULL;
    const struct config *old, *cfg;
    struct rules *stale;

    app_notify_reloading();
    if (subs_config_list(a->subs, &subs, &nsubs) < 0)
        snprintf(err, errlen, "out of memory");
    else
        fresh = rules_load_with(a->config_path, a->lua_dir, subs, nsubs, err, errlen);
    free(subs);
    if (!fresh) {
        a->reload_failures++;
        snprintf(a->reload_error, sizeof a->reload_error, "%s", err);
        log_msg(LOG_ERROR, "reload failed, keeping the current rules: %s", err);
        ingest_emit(a->ingest, "waybill.reload.failed", json_pack("{ss}", "error", err));
        app_notify("READY=1\nSTATUS=serving; the last reload failed");
        return -1;
    }
    old = rules_config(a->rules);
    cfg = rules_config(fresh);
    if (differs(old->listen, cfg->listen) || differs(old->admin_listen, cfg->admin_listen) ||
        differs(old->tls_cert, cfg->tls_cert) || differs(old->tls_key, cfg->tls_key))
        log_msg(LOG_WARN, "reload: a changed listen/admin/tls address needs a restart; "
                          "still serving on the old one");
    if (differs(old->store, cfg->store)) {
        char shown[512];
        log_msg(LOG_WARN, "reload: a changed store needs a restart; still using %s",
                util_url_redact(old->store, shown, sizeof shown));
    }
    log_set_format(cfg->log_format);
    /* Endpoint state, the sweeps, the delivery engine and the listeners
     * move to the new config (the HTTP client asks app_private_allowed,
     * which reads a->rules) before the old generation (which
     * owns the old config) is freed; endpoint state first, as it compares
     * the two. */
    health_set_config(a->health, cfg);
    housekeep_set_config(a->housekeep, cfg);
    deliver_set_config(a->deliver, cfg);
    stale = a->rules;
    a->rules = fresh;
    inbound_reconfigure(a->inbound);
    rules_free(stale);
    a->reloads++;
    a->reload_error[0] = '\0';
    log_msg(LOG_INFO, "reloaded %s", a->config_path);
    app_notify("READY=1\nSTATUS=serving");
    return 0;
}

static void app_status(void *arg, struct admin_status *st) {
    const struct app *a = arg;

    st->started_at = a->started_at;
    st->reloads = a->reloads;
    st->reload_failures = a->reload_failures;
    st->reload_error = a->reload_error;
}

/* ---- signals ---- */

static void on_hup(evutil_socket_t sig, short what, void *arg) {
    char err[512];
    UNUSED(sig);
    UNUSED(what);
    app_reload(arg, err, sizeof err);
}

static void on_deliveries_drained(void *arg) {
    struct app *a = arg;
    store_flush(a->store);
    event_base_loopexit(a->base, NULL);
}

static void on_term(evutil_socket_t sig, short what, void *arg) {
    struct app *a = arg;
    UNUSED(what);
    if (a->stopping) {
        log_msg(LOG_WARN, "second signal: stopping now");
        store_flush(a->store);
        event_base_loopbreak(a->base);
        return;
    }
    a->stopping = 1;
    app_notify("STOPPING=1");
    log_msg(LOG_INFO, "%s: no longer accepting webhooks; finishing %d deliveries in flight",
            sig == SIGINT ? "SIGINT" : "SIGTERM", deliver_inflight(a->deliver));
    inbound_stop(a->inbound);
    admin_stop(a->admin);
    housekeep_stop(a->housekeep);
    deliver_shutdown(a->deliver, rules_config(a->rules)->shutdown_grace_ms, on_deliveries_drained,
                     a);
}

/* The SSRF guard's exceptions: the current config's allow_private. */
static int app_private_allowed(void *arg, int family, const unsigned char *ip) {
    const struct app *a = arg;
    return config_private_allowed(rules_config(a->rules), family, ip);
}

/* The recovery sweep's events go through the router. */
static void on_recovered(void *arg, const struct store_event_row *row) {
    struct app *a = arg;
    route_event(a->route, row, 0);
}

/* ---- life ---- */

/* The loop: epoll's changelist folds the several epoll_ctl calls one
 * connection needs in one loop turn (read off, write on, ...) into one (its
 * caveat, fds dup()ed behind libevent's back, does not apply here); three
 * priorities: 0 unused, 1 default (I/O, timers), 2 group commit and
 * background sweeps, after every ready request of a turn. */
static struct event_base *app_loop_new(void) {
    struct event_config *ec = event_config_new();
    struct event_base *base = NULL;

    if (ec && event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) == 0)
        base = event_base_new_with_config(ec);
    if (ec)
        event_config_free(ec);
    if (base && event_base_priority_init(base, 3) < 0) {
        event_base_free(base);
        base = NULL;
    }
    return base;
}

/* The folder of a file waybill writes (path's part before its last '/',
 * relative to base unless absolute) is made when it is missing (one level,
 * mode 0700), so the store and the pidfile can live in a run directory of
 * their own. what names the file in err. Returns 0, or -1 with err set. */
static int app_make_folder(const char *what, const char *path, size_t len, const char *base,
                           char *err, size_t errlen) {
    const char *slash = memrchr(path, '/', len);
    char dir[4096];
    int n;

    if (!slash || slash == path)
        return 0;
    if (path[0] == '/' || !base)
        n = snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else
        n = snprintf(dir, sizeof dir, "%s/%.*s", base, (int)(slash - path), path);
    if (n <= 0 || (size_t)n >= sizeof dir || mkdir(dir, 0700) == 0 || errno == EEXIST)
        return 0;
    snprintf(err, errlen, "%s: cannot create its folder %s: %s", what, dir, strerror(errno));
    return -1;
}

/* The store's folder: "sqlite:../.run/waybill.db" -> CONFIG_DIR/../.run. */
static int app_store_dir(const struct config *cfg, char *err, size_t errlen) {
    const char *p = cfg->store;

    if (strncmp(p, "sqlite:", 7) != 0)
        return 0;
    p += 7;
    return app_make_folder("store", p, strcspn(p, "?"), cfg->dir, err, errlen);
}

/* Binds both listeners, before anything is created (store, pidfile): a
 * busy port stops the start with nothing left behind. Returns 0, or -1
 * with "cannot listen on ADDR: reason (FILE:LINE: listen)" in err. */
static int app_bind(struct app *a, const struct config *cfg, char *err, size_t errlen) {
    char why[400];

    a->listen_fd = http_bind(cfg->listen, why, sizeof why);
    if (a->listen_fd < 0) {
        snprintf(err, errlen, "%s (%s%s)", why, cfg->listen_where ? cfg->listen_where : "default",
                 cfg->listen_where ? ": listen" : " listen");
        return -1;
    }
    if (!cfg->admin_listen)
        return 0;
    a->admin_fd = http_bind(cfg->admin_listen, why, sizeof why);
    if (a->admin_fd < 0) {
        snprintf(err, errlen, "%s (%s: admin.listen)", why,
                 cfg->admin_where ? cfg->admin_where : cfg->file);
        return -1;
    }
    return 0;
}

/* The modules, bottom up, each handed what it works with. */
static int app_modules_new(struct app *a, char *err, size_t errlen) {
    const struct config *cfg = rules_config(a->rules);

    if (app_store_dir(cfg, err, errlen) < 0 ||
        !(a->store = store_open(a->base, cfg->store, cfg->dir, err, errlen)) ||
        !(a->subs = subs_new(a->store, app_subs_changed, a, err, errlen)) ||
        !(a->httpc = httpc_new(a->base, err, errlen)) ||
        !(a->health = health_new(a->store, err, errlen)))
        return -1;
    if (!(a->stream = stream_new())) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    httpc_set_allow(a->httpc, app_private_allowed, a);
    health_set_config(a->health, cfg);
    if (!(a->deliver = deliver_new(a->base, a->store, a->httpc, a->health, err, errlen)) ||
        !(a->housekeep = housekeep_new(a->base, a->store, on_recovered, a, err, errlen)))
        return -1;
    deliver_set_config(a->deliver, cfg);
    deliver_set_stream(a->deliver, a->stream);
    housekeep_set_config(a->housekeep, cfg);
    a->batch = batch_new(&(struct batch_deps){
        .base = a->base, .store = a->store, .deliver = a->deliver, .rules = &a->rules});
    if (a->batch)
        a->route = route_new(&(struct route_deps){.base = a->base,
                                                  .store = a->store,
                                                  .deliver = a->deliver,
                                                  .batch = a->batch,
                                                  .health = a->health,
                                                  .housekeep = a->housekeep,
                                                  .rules = &a->rules});
    if (a->route)
        a->ingest = ingest_new(&(struct ingest_deps){.store = a->store,
                                                     .route = a->route,
                                                     .deliver = a->deliver,
                                                     .rules = &a->rules,
                                                     .stream = a->stream});
    if (!a->batch || !a->route || !a->ingest) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* waybill's own happenings enter as events, like any other */
    deliver_set_notify(a->deliver, ingest_emit, a->ingest);
    health_set_notify(a->health, ingest_emit, a->ingest);
    a->inbound = inbound_new(&(struct inbound_deps){.base = a->base,
                                                    .store = a->store,
                                                    .httpc = a->httpc,
                                                    .ingest = a->ingest,
                                                    .rules = &a->rules,
                                                    .listen_fd = a->listen_fd},
                             err, errlen);
    a->listen_fd = -1; /* inbound's now, whatever happened */
    if (!a->inbound)
        return -1;
    if (cfg->admin_listen && !(a->admin = admin_new(&(struct admin_deps){.base = a->base,
                                                                         .store = a->store,
                                                                         .deliver = a->deliver,
                                                                         .health = a->health,
                                                                         .httpc = a->httpc,
                                                                         .ingest = a->ingest,
                                                                         .subs = a->subs,
                                                                         .stream = a->stream,
                                                                         .rules = &a->rules,
                                                                         .reload = app_reload,
                                                                         .status = app_status,
                                                                         .arg = a},
                                                    a->admin_fd, cfg->admin_listen, err, errlen))) {
        a->admin_fd = -1;
        return -1;
    }
    a->admin_fd = -1;
    if (app_poll_start(a, err, errlen) < 0)
        return -1;
    log_msg(LOG_INFO, "listening for webhooks on %s%s%s%s", cfg->listen,
            inbound_tls(a->inbound) ? " (TLS)" : "", cfg->admin_listen ? ", admin on " : "",
            cfg->admin_listen ? cfg->admin_listen : "");
    return 0;
}

/* Refuses a pidfile naming another live process (checked before anything
 * is bound or created). Returns 0, or -1 with err set. */
static int app_pidfile_check(const char *path, char *err, size_t errlen) {
    FILE *f = path ? fopen(path, "r") : NULL;
    long other = 0;
    int ok;

    if (!f)
        return 0;
    ok = fscanf(f, "%ld", &other) == 1;
    fclose(f);
    if (ok && other > 0 && other != (long)getpid() && kill((pid_t)other, 0) == 0) {
        snprintf(err, errlen, "pidfile %s: waybill already running as pid %ld", path, other);
        return -1;
    }
    return 0;
}

/* Writes "PID\n" to path. Returns 0, or -1 with err set. */
static int app_pidfile_write(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "w");
    int ok;

    ok = f && fprintf(f, "%ld\n", (long)getpid()) > 0;
    if (f && fclose(f) != 0)
        ok = 0;
    if (!ok) {
        snprintf(err, errlen, "pidfile %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

struct app *app_new(const char *config_path, const char *lua_dir, const char *pidfile, char *err,
                    size_t errlen) {
    struct app *a = calloc(1, sizeof *a);
    const struct config *cfg;
    char store_shown[512];

    if (a)
        a->listen_fd = a->admin_fd = -1;
    if (!a || !(a->config_path = strdup(config_path)) || !(a->lua_dir = strdup(lua_dir))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    a->started_at = util_now_ms();
    if (!(a->rules = rules_load(config_path, lua_dir, err, errlen)))
        goto fail;
    cfg = rules_config(a->rules);
    log_set_format(cfg->log_format);
    if (!pidfile)
        pidfile = cfg->pidfile;
    if (app_pidfile_check(pidfile, err, errlen) < 0 || app_bind(a, cfg, err, errlen) < 0)
        goto fail;
    if (!(a->base = app_loop_new())) {
        snprintf(err, errlen, "cannot create the event loop");
        goto fail;
    }
    if (app_modules_new(a, err, errlen) < 0)
        goto fail;
    for (size_t i = 0; i < cfg->nsources; i++)
        if (cfg->sources[i].verify.kind == VERIFY_NONE)
            log_msg(LOG_WARN, "source %s accepts unsigned requests (verify = \"none\")",
                    cfg->sources[i].name);
    a->sighup = evsignal_new(a->base, SIGHUP, on_hup, a);
    a->sigterm = evsignal_new(a->base, SIGTERM, on_term, a);
    a->sigint = evsignal_new(a->base, SIGINT, on_term, a);
    if (!a->sighup || !a->sigterm || !a->sigint || evsignal_add(a->sighup, NULL) < 0 ||
        evsignal_add(a->sigterm, NULL) < 0 || evsignal_add(a->sigint, NULL) < 0) {
        snprintf(err, errlen, "cannot install signal handlers");
        goto fail;
    }
    if (pidfile) {
        if (app_make_folder("pidfile", pidfile, strlen(pidfile), NULL, err, errlen) < 0 ||
            app_pidfile_write(pidfile, err, errlen) < 0)
            goto fail;
        if (!(a->pidfile = strdup(pidfile))) {
            unlink(pidfile);
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    log_msg(LOG_INFO, "waybill %s serving (%s, store %s, pid %ld%s%s)", WAYBILL_VERSION,
            cfg->sandbox ? "sandbox" : "production",
            util_url_redact(cfg->store, store_shown, sizeof store_shown), (long)getpid(),
            pidfile ? ", pidfile " : "", pidfile ? pidfile : "");
    return a;
fail:
    app_free(a);
    return NULL;
}

/* Commits what the store still holds and runs its callbacks (routing, batch
 * closes, admin replies, carriers' answers) while every module they belong
 * to is alive. Each flush may start one more group from its callbacks (an
 * alert emitted by a health change, say); the chains are short, so a
 * store still busy after many rounds is a bug: logged, and a callback left
 * would run on a freed module, so checked builds stop. */
static void app_drain(struct app *a) {
    int round = 0;

    if (!a->store)
        return;
    while (!store_idle(a->store) && round++ < 1000)
        store_flush(a->store);
    if (!store_idle(a->store)) {
        log_msg(LOG_ERROR, "store: commit callbacks still writing after %d rounds", round);
#ifdef WAYBILL_CHECKS
        abort();
#endif
    }
}

int app_run(struct app *a) {
    char state[64];
    int rc = 0;

    housekeep_recover(a->housekeep);
    batch_start(a->batch);
    deliver_kick_all(a->deliver);
    /* listeners bound and the store open: systemd may start what needs us */
    snprintf(state, sizeof state, "READY=1\nSTATUS=serving\nMAINPID=%ld", (long)getpid());
    app_notify(state);
    store_loop_running(a->store, 1);
    if (event_base_dispatch(a->base) < 0) {
        log_msg(LOG_ERROR, "event loop failed");
        rc = -1;
    }
    store_loop_running(a->store, 0);
    if (a->poll)
        event_del(a->poll); /* the drain runs the loop: no new poll then */
    app_drain(a);
    log_msg(LOG_INFO, "stopped");
    return rc;
}

void app_free(struct app *a) {
    struct event *evs[3];

    if (!a)
        return;
    if (a->poll)
        event_free(a->poll);
    a->poll = NULL;
    app_drain(a); /* before any module that registers callbacks goes */
    evs[0] = a->sighup;
    evs[1] = a->sigterm;
    evs[2] = a->sigint;
    for (size_t i = 0; i < 3; i++)
        if (evs[i])
            event_free(evs[i]);
    admin_free(a->admin);
    inbound_free(a->inbound);
    deliver_free(a->deliver);
    housekeep_free(a->housekeep);
    ingest_free(a->ingest);
    route_free(a->route);
    batch_free(a->batch);
    health_free(a->health);
    httpc_free(a->httpc); /* after its users: JWKS (inbound) and deliveries */
    store_free(a->store); /* its last commit callbacks may still update subs */
    subs_free(a->subs);
    stream_free(a->stream); /* after its publishers and watchers */
    rules_free(a->rules);
    if (a->base)
        event_base_free(a->base);
    if (a->listen_fd >= 0)
        close(a->listen_fd);
    if (a->admin_fd >= 0)
        close(a->admin_fd);
    if (a->pidfile)
        unlink(a->pidfile);
    free(a->pidfile);
    free(a->config_path);
    free(a->lua_dir);
    free(a);
}
