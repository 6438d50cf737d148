/* ruletest.h -- `waybill test-rules FILE`: rule tests in the shape of jq's
 * test files, run through the real rules sandbox (rules_load, rules_route).
 *
 * A file is a sequence of groups of lines separated by blank lines; lines
 * starting with '#' are comments. A group whose first line is "config:"
 * replaces the endpoint/config lines used by the tests after it (default:
 * endpoints erp, crm, bi, alerts, warehouse). Every other test is three
 * groups in a row:
 *   1. the rules (Lua; write it without blank lines),
 *   2. the input event as JSON: {"type":..., "data":{...}} plus optional
 *      id, source, source_id, created_at, shipment (received_at is
 *      2026-01-01T00:00:00Z),
 *   3. what the rules should do: a JSON array of deliveries
 *      [{"endpoint":..., "payload":..., "window":ms|null, "headers":{...}}]
 *      in order ("window" and "headers" are checked only when present; a
 *      string "payload" is compared with the bytes sent, anything else as
 *      JSON), or the word unrouted, or rule_error [: substring of the error].
 * SPDX-License-Identifier: MIT */
#ifndef CORE_RULETEST_H
#define CORE_RULETEST_H

/* Runs every test of path with the shipped Lua library in lua_dir; prints
 * one line per failure and last "N passed, N failed". Returns 0 when all
 * passed, 1 when any failed, 2 when the file cannot be read. */
int ruletest_run(const char *path, const char *lua_dir);

/* `waybill bench-rules -c CONFIG --source NAME [-n N] EVENT.json...`:
 * adapts each event with the source's adapter once, then times N rounds of
 * rules_route over all of them (adapter excluded) and prints one JSON line
 * {"events":E,"rounds":N,"us_per_event":U,"sends_per_event":S}. Returns
 * 0, 1 on an error (printed), 2 on usage. */
int ruletest_bench(int argc, char **argv, const char *lua_dir);

#endif
