/* stream.c -- the live feed's fan-out (see stream.h). A watcher removed
 * while messages are handed out is marked and swept once the hand-out ends,
 * so removing one from its own call is safe.
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "log.h"
#include "stream.h"

struct watcher {
    stream_fn fn;
    void *arg;
    int gone;
};

struct stream {
    struct watcher *w;
    size_t n, cap;
    uint64_t seq;
    int publishing; /* depth of stream_publish on the stack */
};

struct stream *stream_new(void) {
    return calloc(1, sizeof(struct stream));
}

void stream_free(struct stream *s) {
    if (!s)
        return;
    free(s->w);
    free(s);
}

int stream_watch(struct stream *s, stream_fn fn, void *arg) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        struct watcher *w = realloc(s->w, cap * sizeof *w);
        if (!w)
            return -1;
        s->w = w;
        s->cap = cap;
    }
    s->w[s->n++] = (struct watcher){fn, arg, 0};
    return 0;
}

static void stream_sweep(struct stream *s) {
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++)
        if (!s->w[i].gone)
            s->w[k++] = s->w[i];
    s->n = k;
}

void stream_unwatch(struct stream *s, void *arg) {
    for (size_t i = 0; i < s->n; i++)
        if (s->w[i].arg == arg)
            s->w[i].gone = 1;
    if (!s->publishing)
        stream_sweep(s);
}

int stream_watched(const struct stream *s) {
    if (!s)
        return 0;
    for (size_t i = 0; i < s->n; i++)
        if (!s->w[i].gone)
            return 1;
    return 0;
}

void stream_publish(struct stream *s, const char *kind, json_t *msg) {
    char *text = NULL;
    size_t n;

    if (!s || !msg || !stream_watched(s))
        goto done;
    if (!(text = json_dumps(msg, JSON_COMPACT))) {
        log_msg(LOG_WARN, "stream: out of memory; a %s was not streamed", kind);
        goto done;
    }
    s->seq++;
    s->publishing++;
    n = s->n; /* watchers added by a call see the next message */
    for (size_t i = 0; i < n; i++)
        if (!s->w[i].gone)
            s->w[i].fn(s->w[i].arg, kind, s->seq, msg, text);
    if (--s->publishing == 0)
        stream_sweep(s);
done:
    free(text);
    json_decref(msg);
}
