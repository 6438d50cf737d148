/* rules.c -- one generation of config and rules in a sandboxed Lua 5.4 VM:
 * protected construction (STYLE section 3), the limits (an instruction
 * budget counted by a hook that cannot be caught, a memory cap kept by the
 * allocator), carrier adapters and routing.
 * Invariants: between calls no Lua frame is live and the stack is empty;
 * every C allocation made while Lua may raise is owned by the generation or
 * by the caller's out struct, so a Lua error (a longjmp) leaks nothing.
 * SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "jsonx.h"
#include "log.h"
#include "rules.h"
#include "rules_int.h"
#include "util.h"

/* Tokens for kept data; rules run on the loop thread only. */
static uint64_t keep_next_token;


/* ---- small helpers ---- */

/* Whether msg starts with a "file:line:" location. */
static int has_location(const char *msg) {
    for (const char *p = msg; *p && *p != '\n'; p++) {
        if (*p == ':' && p > msg && isdigit((unsigned char)p[1])) {
            const char *q = p + 1;
            while (isdigit((unsigned char)*q))
                q++;
            if (*q == ':')
                return 1;
        }
    }
    return 0;
}

/* dir (as given, may be relative) joined with name; new string. */
static char *path_join2(const char *dir, const char *name) {
    size_t dl = strlen(dir), n;
    char *out;
    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    n = dl + strlen(name) + 2;
    out = malloc(n);
    if (out)
        snprintf(out, n, "%.*s%s%s", (int)dl, dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
    return out;
}

/* The folder of the config path as given ("." when it has none); new. */
static char *given_dir(const char *config_path) {
    const char *slash = strrchr(config_path, '/');
    if (!slash)
        return strdup(".");
    if (slash == config_path)
        return strdup("/");
    return strndup(config_path, (size_t)(slash - config_path));
}

/* How a path written in the config is shown in messages: relative to the
 * directory the config path was given from, like the config path itself. */
static char *display_path(const char *config_path, const char *written) {
    char *dir, *out;
    if (written[0] == '/')
        return strdup(written);
    if (!(dir = given_dir(config_path)))
        return NULL;
    while (written[0] == '.' && written[1] == '/')
        written += 2;
    out = strcmp(dir, ".") == 0 ? strdup(written) : path_join2(dir, written);
    free(dir);
    return out;
}

/* "file:line" of the innermost user frame (not the prelude, not C), or "". */
void rules_user_where(lua_State *L, struct rules *r, char *out, size_t outlen) {
    lua_Debug ar;
    out[0] = '\0';
    for (int level = 1; level < 50 && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0)
            continue;
        if (r->prelude_src && strcmp(ar.short_src, r->prelude_src) == 0)
            continue;
        snprintf(out, outlen, "%s:%d", ar.short_src, ar.currentline);
        return;
    }
}

/* ---- limits: memory ---- */

static void rules_hook(lua_State *L, lua_Debug *ar);

/* Counts every byte the VM holds; refuses growth past the limit. Lua then
 * collects garbage and retries once before raising a memory error; the hook
 * armed here (count 1) stops the rule at its next instruction if the retry
 * failed too, so a pcall can't swallow the error (STYLE section 3 (2)). */
static void *rules_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct rules *r = ud;
    void *p;

    if (!ptr)
        osize = 0; /* osize is a type tag then */
    if (nsize == 0) {
        free(ptr);
        r->mem_used -= osize;
        return NULL;
    }
    if (nsize > osize && r->mem_used - osize + nsize > r->mem_limit)
        goto refuse;
    p = realloc(ptr, nsize);
    if (!p) {
        if (nsize > osize)
            goto refuse;
        return NULL;
    }
    r->mem_used = r->mem_used - osize + nsize;
    if (nsize > osize)
        r->mem_refused = 0;
    return p;
refuse:
    r->mem_hit = r->mem_refused = 1;
    if (r->L)
        lua_sethook(r->L, rules_hook, LUA_MASKCOUNT, 1);
    return NULL;
}

/* ---- limits: instructions ---- */

static void limits_arm(struct rules *r, int64_t budget, const char *kind) {
    r->budget = budget > 0 ? budget : 1;
    r->steps = 0;
    r->stop = RULES_STOP_NONE;
    r->stop_kind = kind;
    r->stop_where[0] = '\0';
    r->mem_hit = r->mem_refused = 0;
    r->chunk = r->budget < RULES_HOOK_CHUNK ? (int)r->budget : RULES_HOOK_CHUNK;
    lua_sethook(r->L, rules_hook, LUA_MASKCOUNT, r->chunk);
}

static const char *stop_reason(int stop) {
    return stop == RULES_STOP_MEMORY ? "memory limit exceeded" : "instruction budget exceeded";
}

/* Raises the stop. Re-arms this thread's hook to fire on every instruction
 * first, so a pcall that catches the error is interrupted again at once. */
static int stop_raise(lua_State *L, struct rules *r) {
    lua_sethook(L, rules_hook, LUA_MASKCOUNT, 1);
    lua_pushfstring(L, "%s: %s: %s", r->stop_where[0] ? r->stop_where : "?", r->stop_kind,
                    stop_reason(r->stop));
    return lua_error(L);
}

static void rules_hook(lua_State *L, lua_Debug *ar) {
    struct rules *r = rules_of(L);

    if (!r->stop) {
        int count = lua_gethookcount(L);
        r->steps += count;
        if (r->mem_hit) {
            if (r->mem_refused)
                r->stop = RULES_STOP_MEMORY;
            else
                r->mem_hit = 0; /* the retry after a collection succeeded */
        }
        if (!r->stop && r->steps >= r->budget)
            r->stop = RULES_STOP_BUDGET;
        if (!r->stop) {
            if (count != r->chunk)
                lua_sethook(L, rules_hook, LUA_MASKCOUNT, r->chunk);
            return;
        }
        if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
            snprintf(r->stop_where, sizeof r->stop_where, "%s:%d", ar->short_src, ar->currentline);
        else
            rules_user_where(L, r, r->stop_where, sizeof r->stop_where);
    }
    stop_raise(L, r);
}

/* Charges a coroutine's creation to the budget: each new coroutine's own
 * hook count starts afresh, so creating many short ones would otherwise
 * escape the count. */
void rules_budget_charge(lua_State *L) {
    struct rules *r = rules_of(L);
    r->steps += r->chunk;
    if (!r->stop && r->steps >= r->budget) {
        r->stop = RULES_STOP_BUDGET;
        rules_user_where(L, r, r->stop_where, sizeof r->stop_where);
    }
    if (r->stop)
        stop_raise(L, r);
}

static void limits_reset(struct rules *r) {
    limits_arm(r, RULES_LOAD_BUDGET, "rule stopped");
}

/* Whether msg already names where ("where: ..."). */
static int names_where(const char *msg, const char *where) {
    size_t n = strlen(where);
    return strncmp(msg, where, n) == 0 && msg[n] == ':';
}

/* Classifies a failed call into "file:line: message". where blames the
 * handler, adapter or file when the error itself carries no location. */
static void call_error(struct rules *r, int status, const char *where, char *err, size_t errlen) {
    lua_State *L = r->L;
    if (r->send_error) {
        if (has_location(r->send_error))
            snprintf(err, errlen, "%s", r->send_error);
        else
            snprintf(err, errlen, "%s: %s", where, r->send_error);
    } else if (r->stop) {
        snprintf(err, errlen, "%s: %s: %s", r->stop_where[0] ? r->stop_where : where, r->stop_kind,
                 stop_reason(r->stop));
    } else if (status == LUA_ERRMEM || (r->mem_hit && r->mem_refused)) {
        snprintf(err, errlen, "%s: %s: %s", where, r->stop_kind, stop_reason(RULES_STOP_MEMORY));
    } else if (status == LUA_OK) {
        snprintf(err, errlen, "%s: failed", where);
    } else {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        if (!msg)
            snprintf(err, errlen, "%s: error object is a %s value", where, luaL_typename(L, -1));
        else if (has_location(msg) || names_where(msg, where))
            snprintf(err, errlen, "%s", msg);
        else
            snprintf(err, errlen, "%s: %s", where, msg);
    }
}

/* Back to a clean state after a failed call: no stop, no pending send
 * error; after a memory stop, the failed call's garbage collected at once. */
static void rules_recover(struct rules *r) {
    int full_gc = r->stop == RULES_STOP_MEMORY || r->mem_hit;
    lua_settop(r->L, 0);
    free(r->send_error);
    r->send_error = NULL;
    limits_reset(r);
    if (full_gc) {
        lua_gc(r->L, LUA_GCCOLLECT, 0);
        limits_reset(r);
    }
}

/* ---- construction ---- */

static int rules_panic(lua_State *L) {
    log_msg(LOG_ERROR, "rules: unprotected Lua error: %s",
            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    abort();
    return 0;
}

/* base (without dofile, loadfile, collectgarbage, warn), string (without
 * dump), table, math, utf8, coroutine, and an os with time, date, clock. */
static void open_safe_libs(lua_State *L) {
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                    {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8},
                                    {LUA_COLIBNAME, luaopen_coroutine},
                                    {NULL, NULL}};
    static const char *const drop[] = {"dofile", "loadfile", "collectgarbage", "warn", NULL};

    for (const luaL_Reg *lib = libs; lib->func; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    for (int i = 0; drop[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, drop[i]);
    }
    lua_getglobal(L, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    /* the string metatable: no rule may reach or change it */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);
    /* os: opened unregistered, only three functions kept */
    lua_pushcfunction(L, luaopen_os);
    lua_call(L, 0, 1);
    lua_createtable(L, 0, 3);
    lua_getfield(L, -2, "time");
    lua_setfield(L, -2, "time");
    lua_getfield(L, -2, "date");
    lua_setfield(L, -2, "date");
    lua_getfield(L, -2, "clock");
    lua_setfield(L, -2, "clock");
    lua_setglobal(L, LUA_OSLIBNAME);
    lua_pop(L, 1);
}

/* Loads the text file at path as a chunk named "@display" (text only).
 * Pushes the function; raises "display:line: message" on a syntax error
 * and "display: cannot read: ..." when the file can't be read. */
static void load_chunk(lua_State *L, const char *path, const char *display) {
    size_t len;
    int status;
    if (rapi_push_file(L, path, &len) < 0)
        luaL_error(L, "%s: cannot read: %s", display, strerror(errno));
    lua_pushfstring(L, "@%s", display);
    status = luaL_loadbufferx(L, lua_touserdata(L, -2), len, lua_tostring(L, -1), "t");
    if (status != LUA_OK)
        lua_error(L);
    lua_replace(L, -3); /* function over the text */
    lua_pop(L, 1);
}

/* Calls api[name]() with nargs arguments below it. [-nargs, +1, e] */
static void api_call(lua_State *L, struct rules *r, const char *name, int nargs) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->api_ref);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    lua_insert(L, -1 - nargs);
    lua_call(L, nargs, 1);
}

/* Runs the chunk at the top in a fresh environment from api[env_fn]
 * (called with display and path). */
static void run_file(lua_State *L, struct rules *r, const char *env_fn, const char *display,
                     const char *path) {
    lua_pushstring(L, display);
    lua_pushstring(L, path);
    api_call(L, r, env_fn, 2);
    if (!lua_setupvalue(L, -2, 1)) /* _ENV */
        lua_pop(L, 1);
    r->loading_file = display;
    limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
    lua_call(L, 0, 0);
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists dir's *.lua files (no hidden ones) into r->files, sorted bytewise. */
static int list_rule_files(struct rules *r, const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t cap = 0;

    if (!d)
        return -1;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        char *full;
        struct stat st;
        if (de->d_name[0] == '.' || len < 5 || strcmp(de->d_name + len - 4, ".lua") != 0)
            continue;
        full = path_join2(dir, de->d_name);
        if (!full || stat(full, &st) < 0 || !S_ISREG(st.st_mode)) {
            free(full);
            continue;
        }
        free(full);
        if (r->nfiles == cap) {
            char **p = realloc(r->files, (cap ? cap * 2 : 16) * sizeof *p);
            if (!p)
                break;
            r->files = p;
            cap = cap ? cap * 2 : 16;
        }
        if (!(r->files[r->nfiles] = strdup(de->d_name)))
            break;
        r->nfiles++;
    }
    closedir(d);
    qsort(r->files, r->nfiles, sizeof *r->files, name_cmp);
    return 0;
}

static void load_rules_dir(lua_State *L, struct rules *r, int decl) {
    const char *written, *where;
    char *display_dir;

    lua_getfield(L, decl, "rules");
    lua_getfield(L, -1, "dir");
    lua_getfield(L, -2, "where");
    written = lua_tostring(L, -2);
    where = lua_tostring(L, -1);
    if (list_rule_files(r, r->cfg->rules_dir) < 0)
        luaL_error(L, "%s: rules: cannot open folder '%s': %s", where, written, strerror(errno));
    display_dir = display_path(r->config_path, written);
    lua_pushstring(L, display_dir ? display_dir : written);
    free(display_dir);
    display_dir = NULL;
    for (size_t i = 0; i < r->nfiles; i++) {
        char *path = path_join2(r->cfg->rules_dir, r->files[i]);
        char *display = path_join2(lua_tostring(L, -1), r->files[i]);
        if (!path || !display) {
            free(path);
            free(display);
            luaL_error(L, "%s: out of memory", where);
        }
        lua_pushstring(L, display); /* keeps the name alive for loading_file */
        lua_pushstring(L, path);
        free(path);
        free(display);
        load_chunk(L, lua_tostring(L, -1), lua_tostring(L, -2));
        run_file(L, r, "rule_env", lua_tostring(L, -3), lua_tostring(L, -2));
        lua_pop(L, 2);
        r->loading_file = r->config_path;
    }
    lua_pop(L, 4);
}

/* Every endpoint named in on(pattern, {list}) must exist. */
static void check_lists(lua_State *L, struct rules *r) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->api_ref);
    lua_getfield(L, -1, "lists");
    for (lua_Integer i = 1, n = (lua_Integer)lua_rawlen(L, -1); i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "names");
        for (lua_Integer j = 1, m = (lua_Integer)lua_rawlen(L, -1); j <= m; j++) {
            lua_rawgeti(L, -1, j);
            if (!config_endpoint_by_name(r->cfg, lua_tostring(L, -1))) {
                lua_getfield(L, -3, "where");
                luaL_error(L, "%s: on: unknown endpoint '%s'", lua_tostring(L, -1),
                           lua_tostring(L, -2));
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 2);
}

/* Resolves and loads each source's adapter into registry[adapters_ref]:
 * its own (a function, a file, or a shipped adapter's name), else
 * lua/sources/<verify preset>.lua when there is one, else generic.lua. */
static void load_adapters(lua_State *L, struct rules *r, int decl) {
    struct config *cfg = r->cfg;
    int by_path, adapters, sources;

    lua_newtable(L); /* path -> function: each file loads once */
    by_path = lua_gettop(L);
    lua_newtable(L);
    adapters = lua_gettop(L);
    lua_getfield(L, decl, "sources");
    sources = lua_gettop(L);
    if (cfg->nsources && !(r->adapter_where = calloc(cfg->nsources, sizeof *r->adapter_where)))
        luaL_error(L, "%s: out of memory", r->config_path);

    for (size_t i = 0; i < cfg->nsources; i++) {
        const struct config_source *src = &cfg->sources[i];
        char *path = NULL, *display = NULL;
        const char *written;
        struct stat st;
        int top = lua_gettop(L), dcl = top + 1;

        lua_rawgeti(L, sources, (lua_Integer)i + 1); /* the declaration */
        lua_getfield(L, dcl, "opts");
        lua_getfield(L, -1, "adapter");
        lua_getfield(L, dcl, "where");
        if (lua_type(L, -2) == LUA_TFUNCTION) {
            r->adapter_where[i] = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            lua_setfield(L, adapters, src->name);
            lua_settop(L, top);
            continue;
        }
        written = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (src->adapter) {
            path = strdup(src->adapter);
            display = written && (strchr(written, '/') || strstr(written, ".lua"))
                          ? display_path(r->config_path, written)
                          : strdup(src->adapter);
        } else {
            char name[96];
            snprintf(name, sizeof name, "sources/%s.lua", src->verify_name);
            path = path_join2(r->lua_dir, name);
            if (path && stat(path, &st) < 0) {
                free(path);
                path = path_join2(r->lua_dir, "sources/generic.lua");
            }
            display = path ? strdup(path) : NULL;
        }
        r->adapter_where[i] = display;
        if (!path || !display) {
            free(path);
            luaL_error(L, "%s: out of memory", r->config_path);
        }
        if (stat(path, &st) < 0) {
            int saved = errno;
            free(path);
            luaL_error(L, "%s: source %s: adapter %s: %s", lua_tostring(L, -1), src->name, display,
                       strerror(saved));
        }
        lua_pushstring(L, path); /* the cache key */
        free(path);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, by_path) == LUA_TNIL) {
            lua_pop(L, 1);
            load_chunk(L, lua_tostring(L, -1), display);
            api_call(L, r, "rule_env", 0);
            if (!lua_setupvalue(L, -2, 1))
                lua_pop(L, 1);
            r->loading_file = display;
            limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
            lua_call(L, 0, 1);
            if (lua_type(L, -1) != LUA_TFUNCTION)
                luaL_error(L, "%s: an adapter file must return a function(body, headers, source)",
                           display);
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -2);
            lua_rawset(L, by_path);
        }
        lua_setfield(L, adapters, src->name);
        lua_settop(L, top);
    }
    lua_pushvalue(L, adapters);
    r->adapters_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, by_path - 1);
    r->loading_file = r->config_path;
}

/* Copies api.handlers into r->handlers (patterns, locations) and a registry
 * array of their functions. */
static void collect_handlers(lua_State *L, struct rules *r) {
    size_t n;
    int list, fns;

    lua_rawgeti(L, LUA_REGISTRYINDEX, r->api_ref);
    lua_getfield(L, -1, "handlers");
    list = lua_gettop(L);
    n = lua_rawlen(L, list);
    lua_createtable(L, (int)n, 0);
    fns = lua_gettop(L);
    if (n && !(r->handlers = calloc(n, sizeof *r->handlers)))
        luaL_error(L, "%s: out of memory", r->config_path);
    r->nhandlers = n;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, list, (lua_Integer)i + 1);
        lua_getfield(L, -1, "pattern");
        lua_getfield(L, -2, "where");
        r->handlers[i].pattern = strdup(lua_tostring(L, -2));
        r->handlers[i].where = strdup(lua_tostring(L, -1));
        if (!r->handlers[i].pattern || !r->handlers[i].where)
            luaL_error(L, "%s: out of memory", r->config_path);
        lua_getfield(L, -3, "fn");
        lua_rawseti(L, fns, (lua_Integer)i + 1);
        if (lua_getfield(L, -3, "list") == LUA_TTABLE) {
            size_t m = lua_rawlen(L, -1);
            struct rules_handler *h = &r->handlers[i];
            if (!(h->names = calloc(m ? m : 1, sizeof *h->names)))
                luaL_error(L, "%s: out of memory", r->config_path);
            for (size_t j = 0; j < m; j++) {
                lua_rawgeti(L, -1, (lua_Integer)j + 1);
                h->names[j] = strdup(lua_tostring(L, -1)); /* names, checked by check_lists */
                lua_pop(L, 1);
                if (!h->names[j])
                    luaL_error(L, "%s: out of memory", r->config_path);
                h->nnames = j + 1;
            }
        }
        lua_pop(L, 4);
    }
    lua_pushvalue(L, fns);
    r->handlers_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, list - 2);
}

/* Builds the whole generation (STYLE section 3 (0), (4)). Raises on any
 * error with "file:line: message". */
static int load_main(lua_State *L) {
    struct rules *r = lua_touserdata(L, 1);
    char *prelude, err[512];
    lua_Debug ar;
    int decl;

    lua_settop(L, 0);
    open_safe_libs(L);

    /* the trusted prelude, given the host's functions */
    if (!(prelude = path_join2(r->lua_dir, "waybill.lua")))
        luaL_error(L, "out of memory");
    lua_pushstring(L, prelude);
    free(prelude);
    r->loading_file = lua_tostring(L, 1);
    load_chunk(L, lua_tostring(L, 1), lua_tostring(L, 1));
    lua_pushvalue(L, -1);
    lua_getinfo(L, ">S", &ar);
    if (!(r->prelude_src = strdup(ar.short_src)))
        luaL_error(L, "out of memory");
    rapi_push_host(L, r);
    lua_call(L, 1, 1);
    if (!lua_istable(L, -1))
        luaL_error(L, "%s: the prelude must return a table", lua_tostring(L, 1));
    r->api_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    r->loading_file = r->config_path;

    /* the config file, then its declarations into C */
    load_chunk(L, r->config_path, r->config_path);
    run_file(L, r, "config_env", r->config_path, r->config_path);
    limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
    api_call(L, r, "declarations", 0);
    decl = lua_gettop(L);
    if (config_from_lua(L, decl, r->config_path, r->lua_dir, &r->cfg, err, sizeof err) < 0)
        luaL_error(L, "%s", err);
    /* subscriptions are endpoints too, for the rules' checks below */
    if (config_set_subscriptions(r->cfg, r->load_subs, r->load_nsubs) < 0)
        luaL_error(L, "%s: out of memory", r->config_path);
    if (r->mem_used > r->cfg->rule_memory)
        luaL_error(L, "%s: rule_memory: the configuration alone uses %d KiB", r->config_path,
                   (int)(r->mem_used >> 10));
    r->mem_limit = r->cfg->rule_memory;
    r->max_output = r->cfg->rule_memory;

    if (r->cfg->rules_dir)
        load_rules_dir(L, r, decl);
    limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
    check_lists(L, r);
    load_adapters(L, r, decl);
    collect_handlers(L, r);
    lua_newtable(L);
    r->keep_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    api_call(L, r, "seal", 0);
    lua_settop(L, 0);
    return 0;
}

struct rules *rules_load(const char *config_path, const char *lua_dir, char *err, size_t errlen) {
    return rules_load_with(config_path, lua_dir, NULL, 0, err, errlen);
}

int rules_set_subscriptions(struct rules *r, const struct config_subscription *v, size_t n) {
    return config_set_subscriptions(r->cfg, v, n);
}

struct rules *rules_load_with(const char *config_path, const char *lua_dir,
                              const struct config_subscription *subs, size_t nsubs, char *err,
                              size_t errlen) {
    struct rules *r = calloc(1, sizeof *r);
    int status;

    if (!r || !(r->config_path = strdup(config_path)) || !(r->lua_dir = strdup(lua_dir))) {
        snprintf(err, errlen, "%s: out of memory", config_path);
        goto fail;
    }
    r->handlers_ref = r->adapters_ref = r->api_ref = r->keep_ref = LUA_NOREF;
    r->load_subs = subs;
    r->load_nsubs = nsubs;
    r->mem_limit = RULES_LOAD_MEMORY;
    r->max_output = RULES_LOAD_MEMORY;
    r->L = lua_newstate(rules_alloc, r);
    if (!r->L) {
        snprintf(err, errlen, "%s: out of memory", config_path);
        goto fail;
    }
    lua_atpanic(r->L, rules_panic);
    *(struct rules **)lua_getextraspace(r->L) = r;
    r->loading_file = config_path;
    limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
    lua_pushcfunction(r->L, load_main);
    lua_pushlightuserdata(r->L, r);
    status = lua_pcall(r->L, 1, 0, 0);
    if (status != LUA_OK) {
        call_error(r, status, r->loading_file ? r->loading_file : config_path, err, errlen);
        goto fail;
    }
    for (size_t i = 0; i < r->nfiles; i++)
        free(r->files[i]);
    free(r->files);
    r->files = NULL;
    r->nfiles = 0;
    r->loading_file = NULL;
    rules_recover(r);
    lua_gc(r->L, LUA_GCCOLLECT, 0); /* start clean: the loading's garbage */
    limits_reset(r);
    r->loaded_at = util_now_ms();
    return r;
fail:
    rules_free(r);
    return NULL;
}

void rules_free(struct rules *r) {
    if (!r)
        return;
    if (r->L)
        lua_close(r->L);
    for (size_t i = 0; i < r->nhandlers; i++) {
        free(r->handlers[i].pattern);
        free(r->handlers[i].where);
        for (size_t j = 0; j < r->handlers[i].nnames; j++)
            free(r->handlers[i].names[j]);
        free(r->handlers[i].names);
    }
    free(r->handlers);
    for (size_t i = 0; r->adapter_where && r->cfg && i < r->cfg->nsources; i++)
        free(r->adapter_where[i]);
    free(r->adapter_where);
    for (size_t i = 0; i < r->nfiles; i++)
        free(r->files[i]);
    free(r->files);
    rapi_plan_reset(r);
    free(r->send_error);
    config_free(r->cfg);
    free(r->prelude_src);
    free(r->config_path);
    free(r->lua_dir);
    free(r);
}

const struct config *rules_config(const struct rules *r) {
    return r->cfg;
}

int64_t rules_loaded_at(const struct rules *r) {
    return r->loaded_at;
}

static void maybe_gc(struct rules *r) {
    if (++r->calls % RULES_GC_EVERY == 0)
        lua_gc(r->L, LUA_GCSTEP, 0);
}

/* ---- data kept from the adapter for routing ---- */

/* Pushes token's kept value and forgets it (take), or just forgets it;
 * returns 0, or -1 (nothing pushed) when this generation does not hold it.
 * Never allocates (it only clears an existing key). */
static int keep_take(struct rules *r, uint64_t token, int push) {
    lua_State *L = r->L;
    size_t slot = (size_t)(token % RULES_KEEP_SLOTS);
    if (!token || r->keep_ref == LUA_NOREF || r->keep_token[slot] != token)
        return -1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->keep_ref);
    if (push) {
        lua_rawgeti(L, -1, (lua_Integer)token);
        lua_insert(L, -2);
    }
    lua_pushnil(L);
    lua_rawseti(L, -2, (lua_Integer)token);
    lua_pop(L, 1);
    r->kept_bytes -= r->keep_bytes[slot];
    r->keep_token[slot] = 0;
    r->keep_bytes[slot] = 0;
    return 0;
}

/* keep_table[token] = value (arguments: value, token); may raise a memory
 * error, so it runs protected. */
static int keep_store(lua_State *L) {
    struct rules *r = rules_of(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->keep_ref);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, lua_tointeger(L, 2));
    return 0;
}

/* Keeps the value at the top (popped) as token's, dropping the oldest when
 * the ring is full. Returns 0, or -1 (nothing kept) when out of memory. */
static int keep_put(struct rules *r, uint64_t token, size_t bytes) {
    lua_State *L = r->L;
    size_t slot = (size_t)(token % RULES_KEEP_SLOTS);
    keep_take(r, r->keep_token[slot], 0);
    lua_pushcfunction(L, keep_store);
    lua_insert(L, -2);
    lua_pushinteger(L, (lua_Integer)token);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        return -1;
    }
    r->keep_token[slot] = token;
    r->keep_bytes[slot] = bytes;
    r->kept_bytes += bytes;
    return 0;
}

/* Whether routing an event of type will build the handler's table: some
 * matching handler is a function (list handlers send data_json's text). */
static int type_needs_table(const struct rules *r, const char *type) {
    if (r->cfg->rule_budget < RULES_LIST_MIN_BUDGET)
        return 1;
    for (size_t i = 0; i < r->nhandlers; i++) {
        const struct rules_handler *h = &r->handlers[i];
        if (h->names || !util_glob_match(h->pattern, type))
            continue;
        if (!strncmp(type, "waybill.", 8) && strncmp(h->pattern, "waybill.", 8))
            continue;
        return 1;
    }
    return 0;
}

void rules_data_drop(struct rules *r, uint64_t token) {
    if (r)
        keep_take(r, token, 0);
}

/* ---- adapters ---- */

struct adapt_ctx {
    struct rules *r;
    int keep; /* keep the data's decoded form for routing (rules_adapt_keep) */
    const char *source;
    const char *where;
    int bad_json; /* the body is not JSON: msg holds the parser's reason */
    const char *raw;
    size_t raw_len;
    const char *headers_json;
    struct rules_event *out;
    char msg[300]; /* a failure found here, already "where: message" */
};

/* A string or number field of the adapter's result as new text (NULL when
 * absent or null). */
static int result_text(lua_State *L, int t, const char *field, char **out) {
    char num[32];
    lua_pushstring(L, field);
    lua_rawget(L, t);
    *out = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        *out = strdup(lua_tostring(L, -1));
    } else if (lua_type(L, -1) == LUA_TNUMBER) {
        if (lua_isinteger(L, -1))
            snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, -1));
        else if (isfinite(lua_tonumber(L, -1)))
            jsonx_number_format((double)lua_tonumber(L, -1), num);
        else
            snprintf(num, sizeof num, "0");
        *out = strdup(num);
    } else {
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    return *out ? 0 : -1;
}

static int adapt_protected(lua_State *L) {
    struct adapt_ctx *c = lua_touserdata(L, 1);
    struct rules *r = c->r;
    struct util_buf data = {0};
    char err[256];
    int res;

    lua_settop(L, 0);
    /* Decoded here, straight into the VM: no jansson tree per request. */
    if (jsonx_decode(L, c->raw, c->raw_len, 0, c->msg, sizeof c->msg) < 0) {
        c->bad_json = 1;
        return 0;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->adapters_ref);
    lua_getfield(L, -1, c->source);
    if (lua_type(L, -1) != LUA_TFUNCTION) {
        snprintf(c->msg, sizeof c->msg, "%s: source %s has no adapter", c->where, c->source);
        return 0;
    }
    lua_remove(L, 2);  /* body, adapter */
    lua_insert(L, 1);  /* adapter, body */
    if (!c->headers_json ||
        jsonx_decode(L, c->headers_json, strlen(c->headers_json), 0, err, sizeof err) < 0)
        lua_newtable(L);
    lua_pushstring(L, c->source);
    lua_pushlstring(L, c->raw, c->raw_len);
    limits_arm(r, r->cfg->rule_budget, "rule stopped");
    lua_call(L, 4, 1);
    res = lua_gettop(L);
    if (r->stop || (r->mem_hit && r->mem_refused))
        return luaL_error(L, "stopped"); /* classified by the caller */
    if (lua_type(L, res) != LUA_TTABLE) {
        snprintf(c->msg, sizeof c->msg, "%s: the adapter returned a %s, not an event table",
                 c->where, luaL_typename(L, res));
        return 0;
    }
    if (result_text(L, res, "type", &c->out->type) < 0 ||
        result_text(L, res, "id", &c->out->source_id) < 0 ||
        result_text(L, res, "created_at", &c->out->created_at) < 0) {
        snprintf(c->msg, sizeof c->msg, "%s: out of memory", c->where);
        return 0;
    }
    if (!c->out->type || !c->out->type[0] || strlen(c->out->type) > 200) {
        snprintf(c->msg, sizeof c->msg, "%s: the adapter returned no event type", c->where);
        return 0;
    }
    lua_pushliteral(L, "data");
    if (lua_rawget(L, res) == LUA_TNIL) {
        c->out->data_json = strdup("{}");
    } else if (c->keep && r->kept_bytes < r->mem_limit / 16 &&
               type_needs_table(r, c->out->type) &&
               jsonx_encode_clone(L, -1, &data, r->max_output, err, sizeof err) == 0) {
        /* What routing would decode from data_json, made while writing it
         * (kept by rules_adapt, to which it is returned). Any failure here,
         * even for memory, falls back to the plain encoding below. */
        c->out->data_token = ++keep_next_token;
        c->out->data_json = data.p;
        data.p = NULL;
        return 1;
    } else if (jsonx_encode(L, -1, &data, r->max_output, err, sizeof err) < 0) {
        snprintf(c->msg, sizeof c->msg, "%s: the adapter's data: %s", c->where, err);
        return 0;
    } else {
        c->out->data_json = data.p ? data.p : strdup("null");
        data.p = NULL;
    }
    if (!c->out->data_json)
        snprintf(c->msg, sizeof c->msg, "%s: out of memory", c->where);
    return 0;
}

static int adapt(struct rules *r, const struct config_source *src, const char *body, size_t len,
                 const char *headers_json, int keep, struct rules_event *out, char *err,
                 size_t errlen) {
    struct adapt_ctx *c;
    const struct config_source *own;
    int status;

    memset(out, 0, sizeof *out);
    own = src ? config_source_by_name(r->cfg, src->name) : NULL;
    if (!own) {
        snprintf(err, errlen, "%s: no source %s in this configuration", r->config_path,
                 src ? src->name : "(null)");
        return -1;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->r = r;
    c->keep = keep;
    c->source = own->name;
    c->where = r->adapter_where && r->adapter_where[own - r->cfg->sources]
                   ? r->adapter_where[own - r->cfg->sources]
                   : own->name;
    c->raw = body ? body : "";
    c->raw_len = body ? len : 0;
    c->headers_json = headers_json;
    c->out = out;
    limits_arm(r, r->cfg->rule_budget, "rule stopped");
    lua_pushcfunction(r->L, adapt_protected);
    lua_pushlightuserdata(r->L, c);
    status = lua_pcall(r->L, 1, 1, 0); /* the data's decoded form when kept, else nil */
    if (status == LUA_OK && c->bad_json) { /* "invalid JSON at line L column C: ..." */
        snprintf(err, errlen, "%s", c->msg);
        free(c);
        out->type = NULL;
        lua_settop(r->L, 0);
        return RULES_EBADJSON;
    }
    if (status != LUA_OK)
        call_error(r, status, c->where, err, errlen);
    else if (c->msg[0])
        snprintf(err, errlen, "%s", c->msg);
    if (status != LUA_OK || c->msg[0]) {
        free(c);
        rules_event_clear(out);
        rules_recover(r);
        return -1;
    }
    free(c);
    if (out->data_token && keep_put(r, out->data_token, strlen(out->data_json) * 4 + 256) < 0)
        out->data_token = 0; /* no room: routing decodes data_json */
    lua_settop(r->L, 0);
    maybe_gc(r);
    return 0;
}

int rules_adapt(struct rules *r, const struct config_source *src, const char *body, size_t len,
                const char *headers_json, struct rules_event *out, char *err, size_t errlen) {
    return adapt(r, src, body, len, headers_json, 0, out, err, errlen);
}

int rules_adapt_keep(struct rules *r, const struct config_source *src, const char *body,
                     size_t len, const char *headers_json, struct rules_event *out, char *err,
                     size_t errlen) {
    return adapt(r, src, body, len, headers_json, 1, out, err, errlen);
}

/* ---- routing ---- */

/* util_time_rfc3339(ms) with the date and time of day kept per second:
 * events arrive many per second, and formatting them is not free. out
 * needs 32 bytes. */
static void received_at_text(struct rules *r, int64_t ms, char *out) {
    int64_t secs = ms / 1000;
    int millis = (int)(ms % 1000);

    if (millis < 0) {
        millis += 1000;
        secs -= 1;
    }
    if (!r->when_base[0] || secs != r->when_secs) {
        char full[40];
        util_time_rfc3339(secs * 1000, full, sizeof full); /* "...:SSZ" */
        snprintf(r->when_base, sizeof r->when_base, "%.*s", (int)strcspn(full, "Z"), full);
        r->when_secs = secs;
    }
    if (millis)
        snprintf(out, 32, "%s.%03dZ", r->when_base, millis);
    else
        snprintf(out, 32, "%sZ", r->when_base);
}

struct route_ctx {
    struct rules *r;
    const struct rules_input *in;
    int failed;
    char *err;
    size_t errlen;
    struct util_buf whole; /* the event as a list handler sends it, once built */
    int whole_state;       /* 0 not tried, 1 built, -1 not buildable here */
};

static void set_text(lua_State *L, int t, const char *field, const char *value) {
    if (!value)
        return;
    lua_pushstring(L, value);
    lua_setfield(L, t, field);
}

/* The __index of an event table: raw and headers read like fields.
 * headers is decoded from its text on first use (most handlers never read
 * it) and kept, so every read gives the same table. Upvalues: raw (a
 * string, or nil), the headers' JSON text (or nil), their table once made. */
static int event_index(lua_State *L) {
    size_t klen, hlen;
    const char *k, *h;
    char err[256];

    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    k = lua_tolstring(L, 2, &klen);
    if (klen == 3 && memcmp(k, "raw", 3) == 0) {
        lua_pushvalue(L, lua_upvalueindex(1));
        return 1;
    }
    if (klen != 7 || memcmp(k, "headers", 7) != 0)
        return 0;
    if (lua_type(L, lua_upvalueindex(3)) != LUA_TTABLE) {
        h = lua_tolstring(L, lua_upvalueindex(2), &hlen);
        if (!h || jsonx_decode(L, h, hlen, 0, err, sizeof err) < 0)
            lua_newtable(L);
        lua_replace(L, lua_upvalueindex(3));
    }
    lua_pushvalue(L, lua_upvalueindex(3));
    return 1;
}

/* Pushes the event table handlers get. raw and headers sit behind a
 * protected metatable's __index, so they read like fields but the JSON
 * encoder (raw access) never sends them with the event. */
static int push_event(lua_State *L, struct route_ctx *c) {
    const struct rules_input *in = c->in;
    char when[40], err[256];
    int ev;

    lua_createtable(L, 0, 8);
    ev = lua_gettop(L);
    set_text(L, ev, "id", in->id);
    set_text(L, ev, "type", in->type);
    set_text(L, ev, "source", in->source);
    set_text(L, ev, "source_id", in->source_id);
    set_text(L, ev, "created_at", in->created_at);
    received_at_text(c->r, in->received_at_ms, when);
    set_text(L, ev, "received_at", when);
    if (in->data_token && keep_take(c->r, in->data_token, 1) == 0) {
        /* the adapter's data as decoding data_json makes it, kept */
    } else if (jsonx_decode(L, in->data_json ? in->data_json : "{}",
                     in->data_json ? strlen(in->data_json) : 2, JSON_DECODE_ANY, err,
                     sizeof err) < 0) {
        snprintf(c->err, c->errlen, "event %s: data: %s", in->id ? in->id : "?", err);
        return -1;
    }
    lua_setfield(L, ev, "data");

    lua_createtable(L, 0, 2); /* metatable */
    if (in->raw)
        lua_pushlstring(L, in->raw, in->raw_len);
    else
        lua_pushnil(L);
    if (in->headers_json)
        lua_pushstring(L, in->headers_json);
    else
        lua_pushnil(L);
    lua_pushnil(L);
    lua_pushcclosure(L, event_index, 3);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, ev);
    return 0;
}

/* How deep data_json's arrays and objects nest (strings skipped). */
static int json_nesting(const char *s, size_t len) {
    int depth = 0, max = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = 0;
        } else if (ch == '"') {
            in_str = 1;
        } else if (ch == '{' || ch == '[') {
            if (++depth > max)
                max = depth;
        } else if (ch == '}' || ch == ']') {
            depth--;
        }
    }
    return max;
}

/* Appends ,"key":value (value a JSON string) unless value is NULL. */
static int whole_field(struct util_buf *b, const char *key, const char *value) {
    size_t klen, vlen, i;
    if (!value)
        return 0;
    klen = strlen(key);
    vlen = strlen(value);
    for (i = 0; i < vlen; i++) { /* plain ASCII needs no escaping: copied at once */
        unsigned char ch = (unsigned char)value[i];
        if (ch < 0x20 || ch >= 0x80 || ch == '"' || ch == '\\')
            break;
    }
    if (i == vlen && b->len + klen + vlen + 4 < b->cap) {
        char *o = b->p + b->len;
        if (b->len > 1)
            *o++ = ',';
        memcpy(o, key, klen);
        o += klen;
        *o++ = '"';
        memcpy(o, value, vlen);
        o += vlen;
        *o++ = '"';
        *o = '\0';
        b->len = (size_t)(o - b->p);
        return 0;
    }
    if (b->len > 1 && util_buf_append(b, ",", 1) < 0)
        return -1;
    if (util_buf_append(b, key, klen) < 0 || jsonx_append_string(b, value, vlen) < 0)
        return -1;
    return 0;
}

/* The bytes jsonx_encode writes for the event table push_event builds,
 * made from the input's own fields and data_json's text (which, being
 * canonical, is what encoding its decoded table gives back). Keys in the
 * encoder's order. Returns 0, or -1 where only encoding the table would
 * say what happens (a string that is not UTF-8, output past the cap,
 * nesting at the encoder's limit, no memory). */
static int whole_build(struct rules *r, const struct rules_input *in, struct util_buf *b) {
    char when[40];
    const char *data = in->data_json ? in->data_json : "{}";
    size_t dlen = strlen(data);

    /* data sits one level down in the event: deep data fails to encode */
    if (dlen >= 2 * (JSONX_MAX_DEPTH - 1) && json_nesting(data, dlen) >= JSONX_MAX_DEPTH - 1)
        return -1;
    received_at_text(r, in->received_at_ms, when);
    if (!b->p) { /* one allocation: the fields are short beside data */
        size_t cap = dlen + 256;
        const char *f[] = {in->created_at, in->id, in->source, in->source_id, in->type};
        for (size_t i = 0; i < sizeof f / sizeof *f; i++)
            cap += f[i] ? strlen(f[i]) : 0;
        if (!(b->p = malloc(cap)))
            return -1;
        b->cap = cap;
        b->len = 0;
        b->p[0] = '\0';
    }
    if (util_buf_append(b, "{", 1) < 0 || whole_field(b, "\"created_at\":", in->created_at) < 0 ||
        (b->len > 1 && util_buf_append(b, ",", 1) < 0) ||
        util_buf_appends(b, "\"data\":") < 0 || util_buf_append(b, data, dlen) < 0 ||
        whole_field(b, "\"id\":", in->id) < 0 ||
        whole_field(b, "\"received_at\":", when) < 0 ||
        whole_field(b, "\"source\":", in->source) < 0 ||
        whole_field(b, "\"source_id\":", in->source_id) < 0 ||
        whole_field(b, "\"type\":", in->type) < 0 || util_buf_append(b, "}", 1) < 0)
        return -1;
    if (r->max_output && b->len > r->max_output)
        return -1;
    return 0;
}

/* Does what list handler h's function does, send(names, ev) with the
 * event unchanged, without calling it. Returns 0 when done, or -1 with
 * nothing changed: then the function is called as usual. */
static int route_list_fast(struct route_ctx *c, const struct rules_handler *h) {
    struct rules *r = c->r;
    size_t nplan = r->nplan, plan_bytes = r->plan_bytes;

    if (c->whole_state == 0)
        c->whole_state = whole_build(r, c->in, &c->whole) == 0 ? 1 : -1;
    if (c->whole_state < 0)
        return -1;
    for (size_t i = 0; i < h->nnames; i++) {
        const struct config_endpoint *ep = config_endpoint_by_name(r->cfg, h->names[i]);
        if (!ep || rapi_plan_add(r, ep->name, c->whole.p, c->whole.len, "application/json", NULL,
                            0) < 0) {
            while (r->nplan > nplan) /* back as it was: the call reports it */
                rapi_send_clear(&r->plan[--r->nplan]);
            r->plan_bytes = plan_bytes;
            return -1;
        }
    }
    return 0;
}

static int route_protected(lua_State *L) {
    struct route_ctx *c = lua_touserdata(L, 1);
    struct rules *r = c->r;
    int fns, ev, status, pristine;

    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->handlers_ref);
    fns = lua_gettop(L);
    ev = 0;
    /* Canonical data is valid: its table waits until a function needs it. */
    if (!c->in->data_canonical) {
        if (push_event(L, c) < 0) {
            c->failed = 1;
            return 0;
        }
        ev = lua_gettop(L);
    }
    /* Until a function handler runs, no code has seen this event's table,
     * so it holds exactly what was pushed. */
    pristine = c->in->data_canonical && r->cfg->rule_budget >= RULES_LIST_MIN_BUDGET;
    for (size_t i = 0; i < r->nhandlers; i++) {
        const struct rules_handler *h = &r->handlers[i];
        if (!util_glob_match(h->pattern, c->in->type))
            continue;
        /* waybill's own events (SPEC 7) match only patterns naming them
         * ("waybill.*"), so a catch-all "*" does not send them to a
         * merchant's endpoint unasked. */
        if (!strncmp(c->in->type, "waybill.", 8) && strncmp(h->pattern, "waybill.", 8))
            continue;
        if (h->names && pristine && route_list_fast(c, h) == 0)
            continue;
        if (!h->names)
            pristine = 0;
        if (!ev) {
            if (push_event(L, c) < 0) {
                c->failed = 1;
                return 0;
            }
            ev = lua_gettop(L);
        }
        lua_rawgeti(L, fns, (lua_Integer)i + 1);
        lua_pushvalue(L, ev);
        limits_arm(r, r->cfg->rule_budget, "rule stopped");
        status = lua_pcall(L, 1, 0, 0);
        if (status != LUA_OK || r->stop || (r->mem_hit && r->mem_refused) || r->send_error) {
            call_error(r, status, h->where, c->err, c->errlen);
            c->failed = 1;
            return 0;
        }
    }
    return 0;
}

int rules_route(struct rules *r, const struct rules_input *ev, struct rules_plan *out, char *err,
                size_t errlen) {
    struct route_ctx c;
    int status;

    out->sends = NULL;
    out->n = 0;
    if (!ev || !ev->type) {
        snprintf(err, errlen, "an event without a type");
        return -1;
    }
    memset(&c, 0, sizeof c);
    c.r = r;
    c.in = ev;
    c.err = err;
    c.errlen = errlen;
    rapi_plan_reset(r);
    free(r->send_error);
    r->send_error = NULL;
    r->routing = 1;
    limits_arm(r, r->cfg->rule_budget, "rule stopped");
    lua_pushcfunction(r->L, route_protected);
    lua_pushlightuserdata(r->L, &c);
    status = lua_pcall(r->L, 1, 0, 0);
    r->routing = 0;
    util_buf_free(&c.whole);
    keep_take(r, ev->data_token, 0); /* not needed (no function ran), or failed */
    if (status != LUA_OK) {
        call_error(r, status, ev->type, err, errlen);
        c.failed = 1;
    }
    if (c.failed) {
        rapi_plan_reset(r);
        rules_recover(r);
        return -1;
    }
    lua_settop(r->L, 0);
    out->sends = r->plan;
    out->n = r->nplan;
    r->plan = NULL;
    r->nplan = r->capplan = r->plan_bytes = 0;
    maybe_gc(r);
    return 0;
}
