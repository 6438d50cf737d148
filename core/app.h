/* app.h -- the running gateway: owns every module and both listeners, the
 * current rules generation and its reload, and waybill's own operational
 * events. The one module that knows them all; each module below is handed
 * only the collaborators it uses, and reaches the app only through the
 * callbacks the app registered with it.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_APP_H
#define CORE_APP_H

#include <stddef.h>

struct app;

/* Loads config_path and its rules, opens the store, binds the listeners
 * and turns SIGHUP (reload) and SIGTERM/SIGINT (graceful stop) into loop
 * callbacks. lua_dir (copied) is the shipped Lua library. pidfile (NULL:
 * the config's `pidfile`, if any) gets the process id once the listeners
 * are bound; app_free removes it. Returns new, or NULL with a reason in
 * err. */
struct app *app_new(const char *config_path, const char *lua_dir, const char *pidfile, char *err,
                    size_t errlen);

/* Serves until stopped; then drains what the store still owes the modules
 * (commit callbacks) while they live. Returns 0, or -1 when the loop failed. */
int app_run(struct app *a);

/* NULL is a no-op. */
void app_free(struct app *a);

#endif
