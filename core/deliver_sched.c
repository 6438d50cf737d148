/* deliver_sched.c -- the per-endpoint scheduler (the model and its
 * invariants are in deliver.h): a queue, a window and a timer per
 * endpoint, claims per endpoint through the store's (endpoint, next_at)
 * index, kicks that look only at endpoints with new rows, and the watchdog
 * that checks the invariant every second.
 * SPDX-License-Identifier: MIT */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "deliver_int.h"
#include "log.h"
#include "util.h"

static int deliver_endpoint_limit(const struct config_endpoint *cep) {
    if (cep->ordered)
        return 1;
    if (cep->concurrency > DELIVER_SLOTS_MAX)
        return DELIVER_SLOTS_MAX;
    return cep->concurrency > 0 ? cep->concurrency : 1;
}

/* ---- endpoint queues ---- */

static void deliver_ep_timer_cb(evutil_socket_t fd, short kind, void *arg);

struct deliver_ep *deliver_ep_find(const struct deliver *d, const char *name) {
    struct deliver_ep *ep;

    for (ep = d->eps; ep; ep = ep->next)
        if (!strcmp(ep->name, name))
            return ep;
    return NULL;
}

struct deliver_ep *deliver_ep_get(struct deliver *d, const char *name) {
    struct deliver_ep *ep = deliver_ep_find(d, name);

    if (ep)
        return ep;
    if (!(ep = calloc(1, sizeof *ep)))
        return NULL;
    ep->d = d;
    if (!(ep->name = strdup(name)) ||
        !(ep->timer = evtimer_new(d->base, deliver_ep_timer_cb, ep))) {
        free(ep->name);
        free(ep);
        return NULL;
    }
    ep->next = d->eps;
    d->eps = ep;
    return ep;
}

void deliver_ep_free(struct deliver_ep *ep) {
    if (ep->timer)
        event_free(ep->timer);
    free(ep->name);
    free(ep);
}

/* Deliveries of an endpoint that is not in the config, or disabled, are
 * neither claimed nor sent: they wait in the store (pending, or held when
 * disabled). Logged once per endpoint and config. */
static void deliver_ep_unavailable(struct deliver *d, struct deliver_ep *ep,
                                   const struct config_endpoint *cep) {
    UNUSED(d);
    if (ep->warned)
        return;
    ep->warned = 1;
    log_msg(LOG_WARN, "endpoint %s is %s: its deliveries wait in the store", ep->name,
            !cep            ? "not in the config"
            : !cep->enabled ? "enabled = false"
                            : "disabled");
}

static struct deliver_xfer *deliver_ep_pop(struct deliver_ep *ep) {
    struct deliver_xfer *x = ep->head;

    if (x) {
        ep->head = x->qnext;
        if (!ep->head)
            ep->tail = NULL;
        x->qnext = NULL;
        ep->nwaiting--;
    }
    return x;
}

static void deliver_ep_push(struct deliver_ep *ep, struct deliver_xfer *x) {
    if (ep->tail)
        ep->tail->qnext = x;
    else
        ep->head = x;
    ep->tail = x;
    ep->nwaiting++;
}

/* at shutdown, or when the endpoint is disabled */
void deliver_ep_drop(struct deliver *d, struct deliver_ep *ep) {
    struct deliver_xfer *x;

    while ((x = deliver_ep_pop(ep)))
        deliver_xfer_free(d, x);
}

void deliver_ep_release(struct deliver *d, struct deliver_ep *ep) {
    struct deliver_xfer *x;
    char err[256];

    while ((x = deliver_ep_pop(ep))) {
        if (store_delivery_lease(d->store, x->row.seq, x->row.next_at, 0, err, sizeof err) < 0)
            log_msg(LOG_WARN,
                    "delivery %s: releasing its lease: %s (it is claimed again when "
                    "the lease ends)",
                    x->row.id, err);
        deliver_xfer_free(d, x);
    }
}

/* Arms ep's timer to fire in delay_ms, unless it already fires sooner: a
 * timer may fire early (the endpoint is just looked at again), never late. */
static void deliver_ep_arm(struct deliver_ep *ep, int64_t delay_ms) {
    int64_t at;
    struct timeval tv;

    if (delay_ms < 0)
        delay_ms = 0;
    at = util_mono_ms() + delay_ms;
    if (ep->timer_at && evtimer_pending(ep->timer, NULL) && ep->timer_at <= at)
        return;
    tv.tv_sec = (time_t)(delay_ms / 1000);
    tv.tv_usec = (suseconds_t)(delay_ms % 1000) * 1000;
    evtimer_add(ep->timer, &tv);
    ep->timer_at = at;
}

/* Rate limit (SPEC 7 `rate`): a token bucket holding up to a tenth of a
 * second's worth (at least one). It starts empty at its first use, as if
 * just used up: a process restarted at once after a crash cannot know what
 * the last one sent, and a full bucket would put a second burst into the
 * second spanning the crash. Returns 1 and takes a token, or 0 and arms
 * ep's timer for when the next one is there. */
static int deliver_ep_take_token(struct deliver_ep *ep, const struct config_endpoint *cep) {
    double cap, wait_ms;
    int64_t now;

    ep->token_wait = 0;
    if (cep->rate <= 0)
        return 1;
    cap = store_rate_burst(cep->rate);
    now = util_mono_ms();
    if (!ep->tokens_at) /* first use: empty */
        ep->tokens_at = now;
    ep->tokens += (double)(now - ep->tokens_at) * cep->rate / 1000.0;
    if (ep->tokens > cap)
        ep->tokens = cap;
    ep->tokens_at = now;
    if (ep->tokens >= 1.0) {
        ep->tokens -= 1.0;
        return 1;
    }
    wait_ms = (1.0 - ep->tokens) * 1000.0 / cep->rate + 1;
    ep->token_wait = now + (int64_t)wait_ms;
    deliver_ep_arm(ep, (int64_t)wait_ms);
    return 0;
}

/* 1 when ep has a token now (not taking it), else 0 with its timer armed
 * for when it has one. */
static int deliver_ep_token_ready(struct deliver_ep *ep, const struct config_endpoint *cep) {
    if (!deliver_ep_take_token(ep, cep))
        return 0;
    ep->tokens += 1.0; /* given back: only looked */
    return 1;
}

/* The whole tokens ep's bucket holds now (none taken), at least one; 0
 * with its timer armed for the next when it holds none. */
static int deliver_ep_tokens(struct deliver_ep *ep, const struct config_endpoint *cep) {
    if (!deliver_ep_token_ready(ep, cep))
        return 0;
    return ep->tokens < 1.0 ? 1 : (int)ep->tokens;
}

/* ep's share of what is claimed into memory, waiting + in flight: its
 * slots plus as many waiting (at most DELIVER_AHEAD_MAX), so each waiting
 * row starts within one slot's round trip (one timeout at worst, inside
 * its lease); a rate-limited endpoint at most DELIVER_RATE_AHEAD_S seconds'
 * worth; an ordered one its head and a short read-ahead. */
static int deliver_ep_window(const struct config_endpoint *cep) {
    int limit = deliver_endpoint_limit(cep), w;

    if (cep->ordered)
        return 1 + DELIVER_ORDERED_AHEAD;
    w = limit + (limit < DELIVER_AHEAD_MAX ? limit : DELIVER_AHEAD_MAX);
    if (cep->rate > 0) {
        double r = cep->rate * DELIVER_RATE_AHEAD_S;
        int rw = r < 1.0 ? 1 : r > (double)w ? w : (int)r;
        if (rw < w)
            w = rw;
    }
    return w;
}

/* Starts x, just popped from ep's FIFO; a delivery that cannot be started
 * is recorded as a failed attempt. */
static void deliver_ep_start(struct deliver *d, struct deliver_ep *ep, struct deliver_xfer *x,
                             const struct config_endpoint *cep) {
    int64_t now = util_now_ms();
    char err[128];

    ep->progress++;
    ep->started_at = util_mono_ms();
    /* A shared store: a row whose lease ran out (or nearly) while it waited
     * here (a loaded machine, groups slow to commit) may be another
     * instance's by now: never sent on an expired lease; dropped (nothing
     * written: its lease has lapsed) and claimed again. */
    if (d->shared && x->lease_until - now < DELIVER_LEASE_SAFE_MS) {
        log_msg(LOG_DEBUG, "delivery %s: its lease ran out while it waited; claimed again",
                x->row.id);
        deliver_xfer_free(d, x);
        deliver_ep_arm(ep, 0);
        return;
    }
    /* A row that waited in memory starts with a fresh lease when less
     * than half of it is left; while the attempt runs the watchdog renews
     * it (deliver_leases_renew). A row held by this process is never
     * claimed twice anyway (deliver_ep_holds); the lease is what another
     * claimer (another instance on PostgreSQL) sees. */
    if (x->lease_until - now < d->lease_ms / 2 &&
        store_delivery_lease(d->store, x->row.seq, now + d->lease_ms, 1, err, sizeof err) == 0)
        x->lease_until = now + d->lease_ms;
    deliver_xfer_send(d, x, cep);
}

/* 1 when ep holds the delivery at seq (waiting or in flight). A claim can
 * return such a row when its lease was cleared or rolled back under it (an
 * endpoint disabled and enabled while it was in flight, a group that
 * failed): it must not be sent twice. At most a window's worth to scan. */
static int deliver_ep_holds(const struct deliver_ep *ep, int64_t seq) {
    for (const struct deliver_xfer *x = ep->xfers; x; x = x->ep_next)
        if (x->row.seq == seq)
            return 1;
    return 0;
}

/* Takes a claimed row into ep's FIFO unless ep holds it already. Returns 1
 * taken, 0 held already, -1 out of memory (it goes out when its lease
 * ends). */
static int deliver_ep_take(struct deliver *d, struct deliver_ep *ep,
                           const struct store_delivery *row) {
    struct deliver_xfer *x;

    if (deliver_ep_holds(ep, row->seq)) {
        log_msg(LOG_DEBUG, "delivery %s claimed again while held; lease renewed", row->id);
        return 0;
    }
    if (!(x = deliver_xfer_new(d, row, ep))) {
        log_msg(LOG_ERROR, "delivery %s: out of memory; it goes out when its lease ends", row->id);
        return -1;
    }
    deliver_ep_push(ep, x);
    return 1;
}

/* ---- reads in flight ---- */

static struct deliver_read *deliver_read_new(struct deliver *d, enum deliver_read_kind kind) {
    struct deliver_read *r = calloc(1, sizeof *r);

    if (!r)
        return NULL;
    r->d = d;
    r->store = d->store;
    r->kind = kind;
    r->now = util_now_ms();
    r->mono = util_mono_ms();
    r->next = d->reads;
    if (d->reads)
        d->reads->prev = r;
    d->reads = r;
    return r;
}

void deliver_read_gone(struct deliver_read *r, int64_t seq) {
    if (!r || r->kind == DELIVER_READ_CHECK)
        return;
    if (r->ngone == r->gone_cap) {
        size_t cap = r->gone_cap ? 2 * r->gone_cap : 8;
        int64_t *p = realloc(r->gone, cap * sizeof *p);
        if (!p) {
            r->gone_lost = 1;
            return;
        }
        r->gone = p;
        r->gone_cap = cap;
    }
    r->gone[r->ngone++] = seq;
}

/* 1 when the row at seq left memory while r was in flight (or one may
 * have, unrecorded). */
static int deliver_read_saw_gone(const struct deliver_read *r, int64_t seq) {
    if (r->gone_lost)
        return 1;
    for (size_t i = 0; i < r->ngone; i++)
        if (r->gone[i] == seq)
            return 1;
    return 0;
}

/* r was answered (or could not be made): unlinks and frees it. */
static void deliver_read_end(struct deliver_read *r) {
    struct deliver *d = r->d;

    if (d) {
        if (r->prev)
            r->prev->next = r->next;
        else
            d->reads = r->next;
        if (r->next)
            r->next->prev = r->prev;
        if (r->ep && r->ep->read == r)
            r->ep->read = NULL;
        if (d->check_read == r)
            d->check_read = NULL;
    }
    free(r->gone);
    free(r);
}

void deliver_reads_detach(struct deliver *d) {
    struct deliver_read *r, *next;

    for (r = d->reads; r; r = next) {
        next = r->next;
        r->d = NULL;
        r->ep = NULL;
        r->prev = r->next = NULL;
    }
    d->reads = NULL;
    d->check_read = NULL;
    for (struct deliver_ep *ep = d->eps; ep; ep = ep->next)
        ep->read = NULL;
}

/* Gives claimed rows the scheduler cannot take back to the store: their
 * leases released in the open group, due again when they were. */
static void deliver_rows_release(struct store *s, const struct store_delivery *rows, size_t n) {
    char err[256];

    for (size_t i = 0; i < n; i++)
        if (store_delivery_lease(s, rows[i].seq, rows[i].next_at, 0, err, sizeof err) < 0)
            log_msg(LOG_WARN,
                    "delivery %s: releasing its lease: %s (it is claimed again when the "
                    "lease ends)",
                    rows[i].id, err);
}

static void deliver_ep_answer(void *arg, const struct store_result *res);

/* The leases of ep's rows this instance holds in a shared store: the rows
 * claimed and not ended, and those whose outcome is not committed yet.
 * Why counted here, not in the store: there every claim would walk the
 * index entries of every row leased in the last `lease` (30 s), which
 * VACUUM may not remove while a long transaction holds the xmin horizon
 * (store_pg_claim.c). */
static int deliver_ep_own_leases(const struct deliver_ep *ep) {
    return ep->inflight + ep->nwaiting + ep->ending;
}

void deliver_eps_ending_watch(struct deliver *d, int watched) {
    if (!d->shared)
        return; /* nothing counted */
    for (struct deliver_ep *ep = d->eps; ep; ep = ep->next) {
        if (!watched)
            ep->ending = 0;
        ep->ending_watched = ep->ending;
    }
}

int deliver_eps_ending_done(struct deliver *d) {
    int more = 0;
    if (!d->shared)
        return 0;
    for (struct deliver_ep *ep = d->eps; ep; ep = ep->next) {
        if (ep->ending_watched)
            deliver_ep_arm(ep, 0); /* its leases ended: it may claim again */
        ep->ending -= ep->ending_watched;
        ep->ending_watched = 0;
        more |= ep->ending > 0;
    }
    return more;
}

/* Asks the store for up to want of ep's rows (an ordered endpoint: its head
 * and, when want > 0 and the head is due, a claim from it on). One read in
 * flight per endpoint: the caller checked ep->read is NULL. On failure (out
 * of memory) the timer looks again. */
static void deliver_ep_claim(struct deliver *d, struct deliver_ep *ep, size_t want, int ordered) {
    /* a shared store: the endpoint's concurrency across instances, less the
     * leases this instance holds (deliver_ep_own_leases; the store counts
     * the other instances'). None left: the rows held look again as they
     * end, and the commit of their outcomes does (deliver_commit_cb). */
    const struct config_endpoint *cep = d->shared ? deliver_endpoint(d, ep->name) : NULL;
    int own_room = cep ? deliver_endpoint_limit(cep) - deliver_ep_own_leases(ep) : 0;
    struct deliver_read *r;
    int rc = -1;

    if (!ordered && cep && own_room <= 0)
        return;
    ep->claimed_mono = util_mono_ms();
    r = deliver_read_new(d, ordered ? DELIVER_READ_ORDERED : DELIVER_READ_CLAIM);
    if (r) {
        size_t cap = cep ? (size_t)own_room : 0;
        double rate = cep && cep->rate > 0 ? cep->rate : 0; /* and its rate, ditto */
        r->ep = ep;
        r->want = want;
        rc = ordered ? store_read_claim_ordered(d->store, ep->name, r->now, d->lease_ms, want,
                                                deliver_ep_answer, r)
                     : store_read_claim_due(d->store, ep->name, r->now, d->lease_ms, want, cap,
                                            rate, deliver_ep_answer, r);
    }
    if (rc < 0) {
        if (r)
            deliver_read_end(r);
        log_msg(LOG_WARN, "endpoint %s: out of memory for a claim; looking again soon", ep->name);
        deliver_ep_arm(ep, DELIVER_POLL_MS);
        return;
    }
    if (want)
        ep->progress++;
    ep->read = r;
}

/* Starts what ep's slots and tokens allow from its FIFO. */
static void deliver_ep_start_waiting(struct deliver *d, struct deliver_ep *ep,
                                     const struct config_endpoint *cep) {
    int limit = deliver_endpoint_limit(cep);

    while (ep->head && !deliver_ep_off(d, ep) && ep->inflight < limit &&
           deliver_ep_take_token(ep, cep))
        deliver_ep_start(d, ep, deliver_ep_pop(ep), cep);
}

/* A rate-limited endpoint on a shared store: each claim takes tokens from
 * the endpoint's bucket in the store, shared by every instance (the rate
 * across instances, store_read_claim_due). So a claim asks only for rows
 * that start at once (a free slot and a token of this instance's own
 * bucket each, which stays as a per-instance bound): a row claimed and
 * left waiting here would go out later than the shared bucket let it, and
 * the instances' sends would no longer follow their claims. And no claim
 * before the shared bucket has a token again (the last claim said when):
 * the timer looks then. */
static void deliver_ep_service_shared_rate(struct deliver *d, struct deliver_ep *ep,
                                           const struct config_endpoint *cep) {
    int64_t mono = util_mono_ms();
    int room, free_slots, tokens;

    deliver_ep_start_waiting(d, ep, cep);
    room = deliver_ep_window(cep) - ep->nwaiting - ep->inflight;
    free_slots = deliver_endpoint_limit(cep) - ep->inflight;
    if (ep->nwaiting || free_slots <= 0) /* a token's timer or a completion looks again */
        return;
    if (ep->shared_wait > mono) {
        deliver_ep_arm(ep, ep->shared_wait - mono);
        return;
    }
    ep->shared_wait = 0;
    if (!(tokens = deliver_ep_tokens(ep, cep)))
        return; /* its timer is armed for the next token */
    if (room > free_slots)
        room = free_slots;
    if (room > tokens)
        room = tokens;
    if (room > 0)
        deliver_ep_claim(d, ep, (size_t)room, 0);
    else if (!ep->inflight)
        deliver_ep_arm(ep, 0); /* not expected: look again */
}

/* An unordered endpoint: start what its slots and tokens allow, then
 * claim into its window (the answer goes on). Started first, so a row that
 * cannot start has its outcome written before the claim reads the next due
 * time. Without a claim, rows wait for a slot (a completion looks again) or
 * a token (its timer is armed): with nothing held, a claim is always made
 * but for a token's wait. */
static void deliver_ep_service_plain(struct deliver *d, struct deliver_ep *ep,
                                     const struct config_endpoint *cep) {
    int window = deliver_ep_window(cep), room;

    if (d->shared && cep->rate > 0) {
        deliver_ep_service_shared_rate(d, ep, cep);
        return;
    }
    deliver_ep_start_waiting(d, ep, cep);
    room = window - ep->nwaiting - ep->inflight;
    /* Claim when the FIFO is empty, or a quarter of the window is free:
     * small claims for one free slot each would cost a query per row. A
     * rate-limited endpoint claims only with a token in hand, so no row
     * waits longer for a token than its window's worth of them. */
    /* A shared store leases at most the endpoint's concurrency across
     * instances, so no row waits here: no claim while this instance's own
     * leases take it all (a completion, or the commit of an outcome, looks
     * again), and with less than a quarter of it free, not before
     * DELIVER_SHARED_POLL_MS after the last claim: a claim per slot freed,
     * one by one, made each claim and group carry a row or two, and
     * delivery under full ingest ran at two thirds of the rate. */
    if (d->shared) {
        int limit = deliver_endpoint_limit(cep), held = deliver_ep_own_leases(ep);
        int64_t wait = ep->claimed_mono + DELIVER_SHARED_POLL_MS - util_mono_ms();
        if (held >= limit) {
            room = 0;
        } else if (held && limit - held < (limit + 3) / 4 && wait > 0) {
            room = 0;
            deliver_ep_arm(ep, wait);
        }
    }
    if (room > 0 && (ep->nwaiting == 0 || room >= (window + 3) / 4) &&
        (cep->rate <= 0 || ep->nwaiting || deliver_ep_token_ready(ep, cep))) {
        deliver_ep_claim(d, ep, (size_t)room, 0);
        return;
    }
    if (!ep->head && !ep->inflight && !ep->token_wait && !ep->ending)
        deliver_ep_arm(ep, 0); /* nothing held and no claim: not expected; look again */
}

/* A shared store with a rate: ep looks again once both buckets hold a
 * token, the shared one (its last claim said when) and its own
 * (deliver_ep_token_ready arms the timer for that one). */
static void deliver_ep_rate_look(struct deliver_ep *ep, const struct config_endpoint *cep) {
    int64_t mono = util_mono_ms();

    if (ep->shared_wait > mono)
        deliver_ep_arm(ep, ep->shared_wait - mono);
    else if (deliver_ep_token_ready(ep, cep))
        deliver_ep_arm(ep, 0);
}

/* A claim's answer for an unordered endpoint (its rows taken): start what
 * slots allow, then sleep until the next row is due, read with the claim
 * (one clock reading, claim_now, for both: a second one could see the next
 * row due that the claim, a moment earlier, did not). */
static void deliver_ep_plain_answer(struct deliver *d, struct deliver_ep *ep,
                                    const struct config_endpoint *cep,
                                    const struct store_result *res, int64_t claim_now,
                                    size_t want) {
    int64_t next = res->next_due;

    if (res->rate_wait > 0) /* the shared bucket is empty: no claim before its next token */
        ep->shared_wait = util_mono_ms() + res->rate_wait;
    deliver_ep_start_waiting(d, ep, cep);
    if (res->status < 0) {
        deliver_ep_arm(ep, DELIVER_POLL_MS);
        return;
    }
    /* Rows taken and none held now: they could not start, and their
     * outcomes (a retry's time) came after the next due time was read: look
     * again, from the loop. */
    if (res->n && !ep->head && !ep->inflight) {
        deliver_ep_arm(ep, 0);
        return;
    }
    /* Rows waiting: for a slot (a completion looks again) or a token (the
     * timer is armed). In flight after a full claim: more may be due, and
     * each completion looks again; on a shared store with a rate, also
     * when the buckets hold a token again (its claims are a token's worth:
     * slow completions must not hold back the next). */
    if (ep->head)
        return;
    if (ep->inflight && res->n == want) {
        if (d->shared && cep->rate > 0)
            deliver_ep_rate_look(ep, cep);
        return;
    }
    if (next == INT64_MAX)
        return;   /* nothing pending: new rows come with a kick */
    if (next < 0) /* a store error */
        deliver_ep_arm(ep, DELIVER_POLL_MS);
    else if (next > claim_now)
        deliver_ep_arm(ep, next - util_now_ms());
    else if (d->shared && res->n < want && res->rate_wait > 0) /* the shared bucket ran out */
        deliver_ep_arm(ep, res->rate_wait);
    else if (d->shared && res->n < want) /* due, and other instances hold the slots */
        deliver_ep_arm(ep, DELIVER_SHARED_POLL_MS);
    else /* more due behind a full claim */
        deliver_ep_arm(ep, 0);
}

/* An ordered endpoint: one delivery in flight, always its oldest pending
 * row (the head), which may wait for a retry while the rest wait behind it.
 * Memory holds the head and a short read-ahead; when the head is not due,
 * the read-ahead is given back, so a blocked endpoint holds nothing. A look
 * is one read: the head, and a claim from it when none is held. */
static void deliver_ep_service_ordered(struct deliver *d, struct deliver_ep *ep) {
    if (ep->inflight)
        return; /* its end looks again */
    deliver_ep_claim(d, ep, ep->head ? 0 : 1 + DELIVER_ORDERED_AHEAD, 1);
}

/* An ordered look's answer (its rows taken): start the head when it is
 * the one held, else wait for it. */
static void deliver_ep_ordered_answer(struct deliver *d, struct deliver_ep *ep,
                                      const struct config_endpoint *cep,
                                      const struct store_result *res, int64_t claim_now,
                                      size_t want) {
    int64_t head = res->head;

    if (res->status < 0) { /* a store error: look again soon */
        deliver_ep_arm(ep, DELIVER_POLL_MS);
        return;
    }
    if (ep->inflight)
        return; /* started since the look (a reload made it ordered): its end looks */
    if (ep->head && ep->head->row.seq != head)
        deliver_ep_release(d, ep); /* the head moved (a retry, a row re-queued) */
    if (head == INT64_MAX)
        return; /* nothing pending: new rows come with a kick */
    if (!ep->head) {
        if (res->head_at > claim_now) { /* waits for its retry (or a lease to end) */
            deliver_ep_arm(ep, res->head_at - util_now_ms());
            return;
        }
        /* With a claim: the head is not committed yet (its commit kicks).
         * Without one (a head held when asked, moved since): look again. */
        deliver_ep_arm(ep, want ? DELIVER_POLL_MS : 0);
        return;
    }
    if (!deliver_ep_take_token(ep, cep))
        return;
    deliver_ep_start(d, ep, deliver_ep_pop(ep), cep);
    if (!ep->inflight)
        deliver_ep_arm(ep, 0); /* a head that could not start: the next one, from the loop */
}

/* The answer to an endpoint's claim or ordered look. Whatever changed
 * since the call is handled here: rows of a stopping engine, or of an
 * endpoint disabled, off the config or gone, are given back; rows it holds
 * already are kept once (deliver_ep_take); a look that came meanwhile
 * (ep->again) is made now. */
static void deliver_ep_answer(void *arg, const struct store_result *res) {
    struct deliver_read *r = arg;
    struct deliver *d = r->d;
    struct deliver_ep *ep = r->ep;
    enum deliver_read_kind kind = r->kind;
    int64_t claim_now = r->now;
    size_t want = r->want, i;
    const struct config_endpoint *cep;
    int again, gave_back = 0;

    if (!d || !ep) { /* deliver_free ran */
        deliver_rows_release(r->store, res->claimed, res->n);
        deliver_read_end(r);
        return;
    }
    if (ep->read == r)
        ep->read = NULL; /* r itself lives until the rows are taken: its gone list */
    DELIVER_CHECK(!ep->read);
    again = ep->again;
    ep->again = 0;
    cep = deliver_endpoint(d, ep->name);
    if (d->stopping || !cep || !cep->enabled || deliver_ep_off(d, ep)) {
        deliver_read_end(r);
        deliver_rows_release(d->store, res->claimed, res->n);
        deliver_ep_service(d, ep); /* unavailable: its waiting rows go back too */
        return;
    }
    if (res->status < 0)
        log_msg(LOG_WARN, "endpoint %s: claiming deliveries: %s", ep->name, res->err);
    for (i = 0; i < res->n; i++) {
        const struct store_delivery *row = &res->claimed[i];
        /* Sent (or given back) while the claim was on its way: its outcome
         * is written and supersedes the claim's lease (the release then
         * changes nothing), or, written before the claim ran, the release
         * gives back what the claim took. Not held: a row held now is
         * deliver_ep_take's to skip. */
        if (!deliver_ep_holds(ep, row->seq) && deliver_read_saw_gone(r, row->seq)) {
            log_msg(LOG_DEBUG, "delivery %s claimed as its transfer ended; given back", row->id);
            deliver_rows_release(d->store, row, 1);
            gave_back = 1;
            continue;
        }
        if (deliver_ep_take(d, ep, row) < 0)
            deliver_ep_arm(ep, d->lease_ms); /* it goes out when its lease ends */
    }
    deliver_read_end(r);
    if (gave_back)
        deliver_ep_arm(ep, 0); /* a row given back may be due: look again */
    if (!cep->ordered != (kind == DELIVER_READ_CLAIM)) {
        deliver_ep_service(d, ep); /* a reload changed its ordering: look afresh */
        return;
    }
    if (kind == DELIVER_READ_ORDERED)
        deliver_ep_ordered_answer(d, ep, cep, res, claim_now, want);
    else
        deliver_ep_plain_answer(d, ep, cep, res, claim_now, want);
    if (again && !ep->read)
        deliver_ep_service(d, ep);
}

/* Looks at one endpoint: everything the scheduler does for it happens
 * here, from a kick, its timer, or a completion. */
void deliver_ep_service(struct deliver *d, struct deliver_ep *ep) {
    const struct config_endpoint *cep;

    if (d->stopping || !d->cfg)
        return;
    if (ep->read) { /* a claim in flight: its answer looks again */
        ep->again = 1;
        return;
    }
    cep = deliver_endpoint(d, ep->name);
    if (!cep || !cep->enabled || deliver_ep_off(d, ep)) {
        if (ep->head || !cep)
            deliver_ep_unavailable(d, ep, cep);
        deliver_ep_release(d, ep);
        return;
    }
    if (cep->ordered)
        deliver_ep_service_ordered(d, ep);
    else
        deliver_ep_service_plain(d, ep, cep);
}

static void deliver_ep_timer_cb(evutil_socket_t fd, short kind, void *arg) {
    struct deliver_ep *ep = arg;

    UNUSED(fd);
    UNUSED(kind);
    ep->timer_at = 0;
    deliver_ep_service(ep->d, ep);
}

/* A kick looks only at endpoints that rows were written for (and whose rows
 * are committed: until then a claim could not see them), or at all of them
 * after deliver_kick_all: a kick costs nothing per idle endpoint, and an
 * endpoint is looked at only for its own reasons, which is what lets the
 * watchdog see a lost wake-up even under other endpoints' traffic. */
void deliver_kick_cb(evutil_socket_t fd, short what, void *arg) {
    struct deliver *d = arg;
    int64_t committed, last;
    int all = d->kick_all;

    UNUSED(fd);
    UNUSED(what);
    d->kick_all = 0;
    store_delivery_seqs(d->store, &committed, &last);
    for (struct deliver_ep *ep = d->eps; ep; ep = ep->next) {
        int look = all;
        /* Rows of its that are committed now: looked at, even when later
         * writes marked it again (under steady ingest every group does, so
         * waiting for the last mark to commit would wait for a pause: the
         * watchdog's tick); the later marks are looked at when the next
         * group ends. */
        if (ep->dirty && ep->dirty_from <= committed) {
            look = 1;
            if (ep->dirty_seq > committed) {
                ep->dirty_from = committed + 1;
            } else {
                ep->dirty = 0;
                ep->dirty_seq = 0;
            }
        }
        if (look)
            deliver_ep_service(d, ep);
    }
}

void deliver_kick_now(struct deliver *d, int all) {
    if (!d || d->stopping)
        return;
    if (all)
        d->kick_all = 1;
    event_active(d->kick_ev, EV_TIMEOUT, 1); /* coalesces while active */
}

void deliver_ep_mark(struct deliver *d, struct deliver_ep *ep) {
    int64_t committed, last;

    store_delivery_seqs(d->store, &committed, &last);
    if (!ep->dirty || last < ep->dirty_from)
        ep->dirty_from = last;
    ep->dirty = 1;
    if (last > ep->dirty_seq)
        ep->dirty_seq = last;
    if (ep->dirty_seq > committed)
        deliver_durable_watch(d);
}

/* An endpoint with pending rows and no queue (a subscription's, after a
 * restart or an admin retry): give it one and look at it. */
static void deliver_discover_one(struct deliver *d, const char *name) {
    struct deliver_ep *ep;

    if (!name || deliver_ep_find(d, name) || !deliver_endpoint(d, name))
        return; /* known, or not an endpoint any more: its rows wait */
    if ((ep = deliver_ep_get(d, name)))
        deliver_ep_service(d, ep);
}

static void deliver_check_answer(void *arg, const struct store_result *res);

static int deliver_ep_free_slot(const struct deliver *d, const struct deliver_ep *ep,
                                const struct config_endpoint *cep, int64_t mono);

/* Reads which endpoints have pending rows (discovery) and, unless
 * discover_only, when the rows of each endpoint with a free slot are due
 * (the watchdog's check; one without is judged at once: not due);
 * deliver_check_answer goes on. */
static void deliver_check_read(struct deliver *d, int late, int discover_only) {
    struct deliver_read *r = deliver_read_new(d, DELIVER_READ_CHECK);
    const char **names = NULL;
    unsigned char *ordered = NULL; /* which of the two due times each one's check uses */
    size_t n = 0, i = 0;
    int64_t mono = util_mono_ms();
    int rc = -1;

    if (!discover_only)
        for (struct deliver_ep *ep = d->eps; ep; ep = ep->next)
            n++;
    if (r && (!n || ((names = malloc(n * sizeof *names)) && (ordered = malloc(n))))) {
        for (struct deliver_ep *ep = d->eps; ep && n; ep = ep->next) {
            const struct config_endpoint *cep = deliver_endpoint(d, ep->name);
            if (deliver_ep_free_slot(d, ep, cep, mono)) {
                ordered[i] = cep->ordered != 0; /* free_slot: cep is not NULL */
                names[i++] = ep->name;
                continue;
            }
            ep->due_free_since = 0;
            ep->stuck = 0;
        }
        n = i;
        r->late = late;
        r->discover_only = discover_only;
        rc = store_read_endpoints_due(d->store, names, ordered, n, 1, deliver_check_answer, r);
    }
    free(names);
    free(ordered);
    if (rc < 0) {
        if (r)
            deliver_read_end(r);
        log_msg(LOG_WARN, "listing endpoints with pending deliveries failed (out of memory)");
        return;
    }
    if (!discover_only)
        d->check_read = r;
}

void deliver_discover(struct deliver *d) {
    deliver_check_read(d, 0, 1);
}

void deliver_watch_endpoint(struct deliver *d, const char *name) {
    struct deliver_ep *ep;

    if (!d || !name || !deliver_endpoint(d, name))
        return;
    if (!(ep = deliver_ep_get(d, name))) {
        log_msg(LOG_ERROR, "endpoint %s: out of memory for its queue; looked at within a second",
                name);
        return;
    }
    deliver_ep_mark(d, ep);
}

/* ---- the watchdog ---- */

/* 1 when ep could start a delivery now: enabled, a free slot, a token
 * (its own, and on a shared store the endpoint's bucket's). */
static int deliver_ep_free_slot(const struct deliver *d, const struct deliver_ep *ep,
                                const struct config_endpoint *cep, int64_t mono) {
    if (!cep || !cep->enabled || deliver_ep_off(d, ep))
        return 0;
    if ((ep->token_wait && ep->token_wait > mono) || ep->shared_wait > mono)
        return 0;
    return ep->inflight < deliver_endpoint_limit(cep);
}

/* 1 when ep has a delivery it could start or claim now: one waiting in
 * memory, or, with room in its window, a committed unleased row due before
 * `before` (ordered: its committed head), as the store answered (due). */
static int deliver_ep_due(const struct deliver_ep *ep, const struct config_endpoint *cep,
                          const struct store_endpoint_due *due, int64_t before) {
    int64_t at;

    if (ep->head)
        return 1;
    if (ep->nwaiting + ep->inflight >= deliver_ep_window(cep))
        return 0;
    at = cep->ordered ? due->head_due : due->next_due;
    return at >= 0 && at <= before;
}

/* Due with a free slot for DELIVER_STUCK_MS, and no transfer started in
 * that time, marks ep stuck (deliver_check_cb). Transfers starting one
 * after another are no stall, even if every tick finds a slot free and a
 * row due between two of them (an ordered endpoint's next head). */
static void deliver_check_stuck(struct deliver_ep *ep, int64_t mono) {
    int64_t since = ep->due_free_since > ep->started_at ? ep->due_free_since : ep->started_at;

    if (mono - since < DELIVER_STUCK_MS) {
        ep->stuck = 0;
        return;
    }
    if (ep->stuck)
        return;
    ep->stuck = 1;
    log_msg(LOG_ERROR,
            "endpoint %s: deliveries due for %" PRId64 " s with a free slot are not going out",
            ep->name, (mono - ep->due_free_since) / 1000);
}

/* The watchdog's judgement of one endpoint (see deliver_check_cb). */
static void deliver_check_ep(struct deliver *d, struct deliver_ep *ep,
                             const struct store_endpoint_due *due, int64_t before, int64_t mono,
                             int late) {
    const struct config_endpoint *cep = deliver_endpoint(d, ep->name);

    if (!deliver_ep_free_slot(d, ep, cep, mono) || !deliver_ep_due(ep, cep, due, before)) {
        ep->due_free_since = 0;
        ep->stuck = 0;
        return;
    }
    if (d->shared && !ep->read && !late) {
        /* a shared store (PostgreSQL): rows other instances inserted, or
         * whose lease expired, come with no kick here; this tick's read
         * is how they are found (within DELIVER_CHECK_MS): a look, not a
         * lost wake-up */
        deliver_ep_service(d, ep);
        ep->progress_seen = ep->progress;
        if (!ep->due_free_since)
            ep->due_free_since = mono;
        deliver_check_stuck(ep, mono);
        return;
    }
    if (!ep->due_free_since) {
        ep->due_free_since = mono;
        ep->progress_seen = ep->progress;
        return;
    }
    /* A look on its way is no lost wake-up: a claim in flight, a kick
     * active, or its timer due before the next tick. (A claim the store
     * failed, a full disk, is made again after DELIVER_POLL_MS, this
     * tick's own period: a tick can fall a moment before it, every tick
     * in a while.) */
    if (ep->progress == ep->progress_seen && !late && !ep->read &&
        !(ep->timer_at && ep->timer_at <= mono + DELIVER_CHECK_MS &&
          evtimer_pending(ep->timer, NULL)) &&
        !event_pending(d->kick_ev, EV_TIMEOUT, NULL)) {
        ep->lost_wakeups++;
        log_msg(LOG_ERROR,
                "endpoint %s: a delivery is due and a slot is free, but nothing "
                "was claimed or started for %" PRId64 " ms (a scheduler bug); "
                "looking again",
                ep->name, mono - ep->due_free_since);
#ifdef WAYBILL_CHECKS
        abort();
#endif
        deliver_ep_service(d, ep);
    }
    ep->progress_seen = ep->progress;
    deliver_check_stuck(ep, mono);
}

/* The watchdog's read answered: endpoints discovered, then each endpoint
 * asked about judged by what the store said and what the scheduler holds
 * now. An answer that took long (a slow store) judges no one. */
static void deliver_check_answer(void *arg, const struct store_result *res) {
    struct deliver_read *r = arg;
    struct deliver *d = r->d;
    int64_t mono = util_mono_ms(), before = r->now - DELIVER_CHECK_MS;
    int late = r->late || mono - r->mono > DELIVER_CHECK_MS / 2, discover_only = r->discover_only;

    deliver_read_end(r);
    if (!d || d->stopping || !d->cfg)
        return;
    if (res->status < 0)
        log_msg(LOG_WARN, "listing endpoints with pending deliveries failed: %s", res->err);
    for (size_t i = 0; res->status >= 0 && i < res->n; i++)
        deliver_discover_one(d, res->ids[i]);
    if (discover_only)
        return;
    for (size_t i = 0; i < res->ndues; i++) {
        struct deliver_ep *ep = deliver_ep_find(d, res->dues[i].name);
        if (ep) /* else gone since the tick (a reload) */
            deliver_check_ep(d, ep, &res->dues[i], before, mono, late);
    }
}

/* Every tick: an attempt still running when less than half its lease is
 * left renews it for another lease (the `lease` setting), so another
 * instance never takes a delivery whose attempt is alive, however long
 * its timeout. A lease that could not be renewed lapses: its row may be
 * claimed elsewhere (a duplicate only from an expired lease). */
static void deliver_leases_renew(struct deliver *d, int64_t now) {
    char err[256];

    for (struct deliver_xfer *x = d->xfers; x; x = x->next) {
        if (!x->started || x->lease_until - now >= d->lease_ms / 2)
            continue;
        if (store_delivery_lease(d->store, x->row.seq, now + d->lease_ms, 1, err, sizeof err) == 0)
            x->lease_until = now + d->lease_ms;
        else
            log_msg(LOG_WARN, "delivery %s: renewing its lease: %s", x->row.id, err);
    }
}

/* Checks, every DELIVER_CHECK_MS, the scheduler's invariant (deliver.h):
 * an endpoint found due with a free slot at two ticks in a row must have
 * had a claim or a start in between, unless a look at it is already on its
 * way (a claim of it in flight, its timer due before the next tick, a kick active, or this
 * tick itself came late because the loop was held up). A breach is a lost
 * wake-up: logged, counted, repaired by looking at the endpoint; under
 * WAYBILL_CHECKS (debug and sanitizer builds) it aborts. Due with a free
 * slot for DELIVER_STUCK_MS with no transfer started (claims that keep
 * finding nothing: the store) marks the endpoint stuck, which /healthz reports. What is due comes
 * from one asynchronous read per tick (every endpoint's next due row and head, and the endpoints
 * with pending rows for discovery), judged when it is answered; a tick whose last read is still
 * unanswered makes none. */
void deliver_check_cb(evutil_socket_t fd, short kind, void *arg) {
    struct deliver *d = arg;
    int64_t mono = util_mono_ms(), now = util_now_ms();
    int late;

    UNUSED(fd);
    UNUSED(kind);
    if (d->stopping || !d->cfg)
        return;
    /* After the loop was held up (a long sync wait), timers that are due
     * may not have run yet; after the wall clock stepped, rows (due by the
     * wall clock) may be due before the timers (monotonic) that wait for
     * them: judge no one on such a tick. */
    late =
        d->check_at && (mono - d->check_at > DELIVER_CHECK_MS + DELIVER_CHECK_MS / 2 ||
                        llabs((now - d->check_wall) - (mono - d->check_at)) > DELIVER_CHECK_MS / 2);
    d->check_at = mono;
    d->check_wall = now;
    deliver_leases_renew(d, now);
    if (d->check_read)
        return; /* the last tick's read is unanswered: it judges when it is */
    deliver_check_read(d, late, 0);
}

/* ---- what it holds ---- */

void deliver_kick(struct deliver *d) {
    deliver_kick_now(d, 0);
}

void deliver_kick_all(struct deliver *d) {
    if (!d || d->stopping)
        return;
    d->all_at_commit = 1;
    deliver_commit_watch(d);
    deliver_kick_now(d, 1);
}

int deliver_inflight(const struct deliver *d) {
    return d->inflight;
}

int deliver_endpoint_stats(const struct deliver *d, const char *name,
                           struct deliver_endpoint_stats *st) {
    const struct deliver_ep *ep = deliver_ep_find(d, name);

    memset(st, 0, sizeof *st);
    if (!ep)
        return 0;
    st->in_memory = ep->nwaiting + ep->inflight;
    st->in_flight = ep->inflight;
    st->stuck = ep->stuck;
    st->lost_wakeups = ep->lost_wakeups;
    return 1;
}

size_t deliver_stuck(const struct deliver *d, char *names, size_t len) {
    size_t n = 0, used = 0;

    if (len)
        names[0] = '\0';
    for (const struct deliver_ep *ep = d->eps; ep; ep = ep->next) {
        if (!ep->stuck)
            continue;
        if (len > used) {
            int w = snprintf(names + used, len - used, "%s%s", n ? ", " : "", ep->name);
            used += w > 0 ? (size_t)w : 0;
            if (used >= len)
                used = len - 1;
        }
        n++;
    }
    return n;
}
