/* rules.c -- one generation of config and rules in a sandboxed Lua 5.4 VM:
 * protected construction (STYLE section 3), the limits (an instruction
 * budget counted by a hook that cannot be caught, a memory cap kept by the
 * allocator), loading the config, the rule files and the adapters, and
 * freeing. What runs in a generation afterwards is in rules_adapt.c
 * (carrier adapters), rules_route.c (routing) and rules_api.c (the host
 * functions rules call), all behind rules_int.h.
 * Invariants: between calls no Lua frame is live and the stack is empty;
 * every C allocation made while Lua may raise is owned by the generation or
 * by the caller's out struct, so a Lua error (a longjmp) leaks nothing.
 * SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "log.h"
#include "rules.h"
#include "rules_int.h"
#include "util.h"

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

void rules_limits_arm(struct rules *r, int64_t budget, const char *kind) {
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
    rules_limits_arm(r, RULES_LOAD_BUDGET, "rule stopped");
}

/* Whether msg already names where ("where: ..."). */
static int names_where(const char *msg, const char *where) {
    size_t n = strlen(where);
    return strncmp(msg, where, n) == 0 && msg[n] == ':';
}

/* Classifies a failed call into "file:line: message". where blames the
 * handler, adapter or file when the error itself carries no location. */
void rules_call_error(struct rules *r, int status, const char *where, char *err, size_t errlen) {
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

static int pattern_matches(const char *pattern, const char *type) {
    return util_glob_match(pattern, type) &&
           (strncmp(type, "waybill.", 8) != 0 || strncmp(pattern, "waybill.", 8) == 0);
}

int rules_handler_matches(const struct rules_handler *h, const char *type) {
    const char *p = h->pattern, *nl;
    char one[256];

    if (!strchr(p, '\n'))
        return pattern_matches(p, type);
    for (; p; p = nl ? nl + 1 : NULL) {
        size_t n;
        nl = strchr(p, '\n');
        n = nl ? (size_t)(nl - p) : strlen(p);
        if (n >= sizeof one)
            continue; /* lua/waybill.lua refuses patterns that long */
        memcpy(one, p, n);
        one[n] = '\0';
        if (pattern_matches(one, type))
            return 1;
    }
    return 0;
}

/* Back to a clean state after a failed call: no stop, no pending send
 * error; after a memory stop, the failed call's garbage collected at once. */
void rules_recover(struct rules *r) {
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
    rules_limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
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
 * its own (a function, a file, or a shipped adapter's name), else its
 * carrier's lua/sources/<carrier>.lua, else generic.lua. */
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
            snprintf(name, sizeof name, "sources/%s.lua", src->carrier ? src->carrier : "generic");
            path = path_join2(r->lua_dir, name);
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
            rules_limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
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

/* Raises when env() met unset variables and the load is not offline:
 * every name at once, each with where it was asked for. */
static void check_missing_env(lua_State *L, struct rules *r) {
    luaL_Buffer b;
    const char *first;
    size_t flen;

    if (r->nmissing == 0 || r->placeholders)
        return;
    first = r->missing[0].where;
    if (r->nmissing == 1)
        luaL_error(L, "%s: env %s is not set", first, r->missing[0].name);
    flen = strrchr(first, ':') ? (size_t)(strrchr(first, ':') - first) : 0;
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "%s: %d env variables are not set:", first, (int)r->nmissing);
    luaL_addvalue(&b);
    for (size_t i = 0; i < r->nmissing; i++) {
        const char *w = r->missing[i].where;
        int same = flen && strncmp(w, first, flen) == 0 && w[flen] == ':';
        lua_pushfstring(L, "%s %s (%s%s)", i ? "," : "", r->missing[i].name, same ? "line " : "",
                        same ? w + flen + 1 : w);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    lua_error(L);
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
    check_missing_env(L, r);
    rules_limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
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

    if (r->cfg->rules_dir && !r->config_only)
        load_rules_dir(L, r, decl);
    check_missing_env(L, r);
    rules_limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
    check_lists(L, r);
    if (!r->config_only)
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

/* rules_load_with; offline: placeholders for unset env() variables. */
static struct rules *load_generation(const char *config_path, const char *lua_dir,
                                     const struct config_subscription *subs, size_t nsubs,
                                     int offline, int config_only, char *err, size_t errlen) {
    struct rules *r = calloc(1, sizeof *r);
    int status;

    if (!r || !(r->config_path = strdup(config_path)) || !(r->lua_dir = strdup(lua_dir))) {
        snprintf(err, errlen, "%s: out of memory", config_path);
        goto fail;
    }
    r->placeholders = offline;
    r->config_only = config_only;
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
    rules_limits_arm(r, RULES_LOAD_BUDGET, "stopped while loading");
    lua_pushcfunction(r->L, load_main);
    lua_pushlightuserdata(r->L, r);
    status = lua_pcall(r->L, 1, 0, 0);
    if (status != LUA_OK) {
        rules_call_error(r, status, r->loading_file ? r->loading_file : config_path, err, errlen);
        goto fail;
    }
    for (size_t i = 0; i < r->nfiles; i++)
        free(r->files[i]);
    free(r->files);
    r->files = NULL;
    r->nfiles = 0;
    r->loading_file = NULL;
    r->load_subs = NULL; /* the caller's, borrowed for the load only */
    r->load_nsubs = 0;
    rules_recover(r);
    lua_gc(r->L, LUA_GCCOLLECT, 0); /* start clean: the loading's garbage */
    limits_reset(r);
    r->loaded_at = util_now_ms();
    return r;
fail:
    rules_free(r);
    return NULL;
}

struct rules *rules_load_with(const char *config_path, const char *lua_dir,
                              const struct config_subscription *subs, size_t nsubs, char *err,
                              size_t errlen) {
    return load_generation(config_path, lua_dir, subs, nsubs, 0, 0, err, errlen);
}

struct rules *rules_load_offline(const char *config_path, const char *lua_dir, int config_only,
                                 char *note, size_t notelen, char *err, size_t errlen) {
    struct rules *r = load_generation(config_path, lua_dir, NULL, 0, 1, config_only, err, errlen);
    size_t used = 0;

    if (notelen)
        note[0] = '\0';
    for (size_t i = 0; r && i < r->nmissing && used < notelen; i++) {
        int n = snprintf(note + used, notelen - used, "%s%s",
                         i ? ", " : "unset env replaced by placeholders: ", r->missing[i].name);
        used += n > 0 ? (size_t)n : 0;
    }
    return r;
}

const char *rules_placeholder_env(const struct rules *r, const char *value) {
    for (size_t i = 0; r && value && i < r->nmissing; i++)
        if (strcmp(r->missing[i].value, value) == 0)
            return r->missing[i].name;
    return NULL;
}

void rules_free(struct rules *r) {
    if (!r)
        return;
    for (size_t i = 0; i < r->nmissing; i++) {
        free(r->missing[i].name);
        free(r->missing[i].where);
        free(r->missing[i].value);
    }
    free(r->missing);
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
    free(r->matched);
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
