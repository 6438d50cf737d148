/* jsonx.h -- JSON <-> Lua values for the rules VM (an encoder, a direct
 * decoder kept for speed, and jansson for C-side parsing).
 * Encoding is compact and deterministic, and byte for byte what JavaScript's
 * JSON.stringify prints for the same data: numbers in shortest round-trip
 * form (40.0 -> 40, 1e21 -> 1e+21; an integer beyond +-2^53 as the double
 * JavaScript would hold), strings escaped as JSON.stringify does (only '"',
 * '\\' and control characters; UTF-8 passed through), and keys in the order
 * JSON.stringify(JSON.parse(x)) keeps: array-index keys ("0", "17") first
 * in numeric order, then the others in the order they were received (an
 * object decoded here keeps it, and so do the clones and copies the
 * encoder makes of it); keys a table got in Lua (a table built in Lua, or
 * keys a rule added to a decoded one) after those, bytewise. So a receiver
 * that HMACs JSON.stringify of the parsed body gets our bytes.
 * Lua side: JSON null is json.null, a light userdata (never nil, so nulls in
 * objects and arrays survive a round trip); arrays decoded from JSON carry a
 * shared, protected metatable (json.array marks a table the same way), so
 * [] stays []. An unmarked table whose keys are exactly 1..n is an array;
 * an unmarked empty table is {}.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_JSONX_H
#define CORE_JSONX_H

#include <stddef.h>

#include <jansson.h>
#include <lua.h>

#include "util.h"

/* Deepest nesting either direction handles (jansson's parser limit). */
#define JSONX_MAX_DEPTH 2048

/* Deepest nesting a carrier's body may have: the event that carries its
 * data (one level more) must still encode. */
#define JSONX_MAX_BODY_DEPTH (JSONX_MAX_DEPTH - 1)

/* How deep text's arrays and objects nest (brackets inside strings not
 * counted); for any text, JSON or not. */
int jsonx_nesting(const char *text, size_t len);

/* Pushes the json module table {encode, decode, null, array} and registers
 * the array metatable. json.encode's output is capped at *max_output bytes,
 * read at each call (borrowed: it must outlive L; NULL or 0: no cap).
 * [-0, +1, m] */
int jsonx_open(lua_State *L, const size_t *max_output);

/* Pushes json.null. [-0, +1, -] */
void jsonx_push_null(lua_State *L);

/* Whether the value at idx is json.null. [-0, +0, -] */
int jsonx_is_null(lua_State *L, int idx);

/* Marks the table at idx as a JSON array (jsonx_open must have run).
 * [-0, +0, -] */
void jsonx_mark_array(lua_State *L, int idx);

/* Appends the value at idx as compact JSON to out. Reads tables raw (no
 * metamethods run). Never raises: a memory error inside is caught and
 * reported. Returns 0, or -1 with a reason in err ("cannot encode a
 * function value", "nesting deeper than 2048 levels (a cycle?)", "cannot
 * encode NaN or infinity", "invalid UTF-8 in a string", "output larger than
 * N bytes", "not enough memory") and out cut back to its length at entry.
 * max caps the bytes appended (0: no cap). [-0, +0, -] */
int jsonx_encode(lua_State *L, int idx, struct util_buf *out, size_t max, char *err, size_t errlen);

/* jsonx_encode that also pushes the value jsonx_decode(JSON_DECODE_ANY)
 * would make of the bytes it appended, without parsing them: new tables
 * made and filled as the decoder makes and fills them (keys as strings, in
 * the order written; floats read back from their text, so 1.0 becomes the
 * integer 1; holes and json.null as json.null), strings and booleans as
 * they are. Lets a caller keep the decoded form of text it just wrote.
 * Returns 0 with the value pushed, or -1 as jsonx_encode does with nothing
 * pushed (a memory error is reported as "not enough memory"). [-0, +(0|1), -] */
int jsonx_encode_clone(lua_State *L, int idx, struct util_buf *out, size_t max, char *err,
                       size_t errlen);

/* Appends str (len bytes) to out as a JSON string, quoted and escaped as
 * jsonx_encode escapes. Returns 0, or -1 (out unchanged) when str is not
 * valid UTF-8 or memory ran out. No Lua state involved. */
int jsonx_append_string(struct util_buf *out, const char *str, size_t len);

/* Parses text with jansson (JSON_ALLOW_NUL added to flags; an integer too
 * big for 64 bits is read as a double rather than refused). Returns a new
 * reference, or NULL with "invalid JSON at line L column C: reason". */
json_t *jsonx_parse(const char *text, size_t len, size_t flags, char *err, size_t errlen);

/* Pushes j as a Lua value (objects -> tables, arrays -> marked tables,
 * null -> json.null, integers -> integers, reals -> floats). Raises on a
 * memory error. [-0, +1, m] */
void jsonx_push(lua_State *L, const json_t *j);

/* The direct decoder: decodes text straight onto the Lua stack (no jansson
 * tree in between), accepting exactly what jsonx_parse accepts (flags:
 * JSON_DECODE_ANY allows any top-level value, else an object or array is
 * required) and pushing what jsonx_push would. Returns 0 with the value
 * pushed, or -1 with "invalid JSON at line L column C: reason" in err (the
 * reason and place jansson gives) and nothing pushed. A memory error
 * raises (nothing C-allocated is left behind). It stays beside jsonx_parse
 * + jsonx_push for speed only (every ingested body goes through it, about
 * a quarter of their instructions), so it must match them exactly; see
 * jsonx_decode.c for what that covers and the test that holds it to it.
 * [-0, +(0|1), m] */
int jsonx_decode(lua_State *L, const char *text, size_t len, size_t flags, char *err,
                 size_t errlen);

/* Formats a finite double as JavaScript's Number#toString does: "40",
 * "0.1", "1e+21", "1e-7", "-1.5". out needs 32 bytes; returns the length. */
size_t jsonx_number_format(double d, char *out);

#endif
