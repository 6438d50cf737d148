/* admin_openapi.c -- GET /api/openapi.json: the OpenAPI 3.1 description of
 * the admin API, core/web/openapi.json embedded in the binary when it is
 * built (the Makefile passes its path as WAYBILL_OPENAPI_FILE and makes
 * this object depend on it), served as it is.
 * SPDX-License-Identifier: MIT */
#include <stddef.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "admin_int.h"

#ifndef WAYBILL_OPENAPI_FILE
#define WAYBILL_OPENAPI_FILE "core/web/openapi.json"
#endif

extern const char admin_openapi_start[], admin_openapi_end[];

__asm__(".section .rodata\n"
        ".balign 16\n"
        "admin_openapi_start:\n"
        ".incbin \"" WAYBILL_OPENAPI_FILE "\"\n"
        "admin_openapi_end:\n"
        ".byte 0\n"
        ".previous\n");

int admin_openapi_dispatch(struct evhttp_request *req, const char *path, int method) {
    struct evbuffer *out;

    if (strcmp(path, "/api/openapi.json") != 0 || method != EVHTTP_REQ_GET)
        return 0;
    out = evbuffer_new();
    if (!out ||
        evbuffer_add_reference(out, admin_openapi_start,
                               (size_t)(admin_openapi_end - admin_openapi_start), NULL, NULL) < 0) {
        if (out)
            evbuffer_free(out);
        evhttp_send_error(req, 503, "out of memory");
        return 1;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
    return 1;
}
