/* cli.h -- `waybill events|event|retry|replay|test`: wrappers over the
 * admin API (SPEC section 8) with libcurl easy. The admin address and token
 * come from the config file (-c, default waybill.lua) or --url/--token.
 * Readable tables by default, the API's JSON with --json.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_CLI_H
#define CORE_CLI_H

/* 1 when cmd is one of the commands here. */
int cli_is_command(const char *cmd);

/* Runs argv[0] (a cli_is_command name) with its options; lua_dir is the
 * shipped Lua library (for reading the config). Returns the exit status:
 * 0, 1 on an API error (reason on stderr), 2 on a usage error. */
int cli_main(int argc, char **argv, const char *lua_dir);

#endif
