-- waybill.lua -- waybill's shipped prelude: the sandbox every config, rule
-- and adapter file runs in, the config DSL (source, endpoint, rules, env and
-- the top-level settings) and the rule DSL (on, send, batch, subscribers).
-- Trusted: rules.c runs it before any user code, with the host's privileged
-- functions as its argument. Nothing here hands `host` (or the real global
-- table, or any library table it shares) to user code.
-- SPDX-License-Identifier: MIT

local host = ...

local where, getenv, readfile = host.where, host.getenv, host.readfile
local lua_dir, json = host.lua_dir, host.json
local error, ipairs, load, pairs, rawget, setmetatable, tostring, type =
    error, ipairs, load, pairs, rawget, setmetatable, tostring, type
local string_format = string.format

local M = {}     -- what rules.c reads back
local sealed = false

-- {====================================================================
-- The sandbox
-- =====================================================================

-- Functions every environment gets as they are.
local base = {}
for _, name in ipairs { "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall",
    "rawequal", "rawget", "rawlen", "rawset", "select", "tonumber", "tostring", "type" } do
  base[name] = _G[name]
end
base._VERSION = _VERSION
base.print = host.print

-- An error raised by the budget hook runs xpcall's message handler with
-- hooks off (Lua is still inside the hook), so a looping handler could never
-- be stopped: once a rule is stopped, the user's handler is skipped.
local xpcall_raw, stopped = xpcall, host.stopped
function base.xpcall(f, msgh, ...)
  if type(msgh) ~= "function" then return xpcall_raw(f, msgh, ...) end
  return xpcall_raw(f, function(e)
    if stopped() then return e end
    return msgh(e)
  end, ...)
end

-- A finalizer runs with hooks off, so no budget could stop it: refuse them.
-- (Lua only honours a __gc present when setmetatable is called.)
function base.setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc metamethods are not allowed in rules", 2)
  end
  return setmetatable(t, mt)
end

-- Libraries; each environment gets its own shallow copy of each table, so a
-- rule file that changes string.x changes it for itself only. string.dump
-- is gone from the real string table (rules.c removes it).
local libs = {
  string = string,
  table = table,
  math = math,
  utf8 = utf8,
  coroutine = {
    create = host.co_create, wrap = host.co_wrap, -- charged to the budget
    resume = coroutine.resume, yield = coroutine.yield, status = coroutine.status,
    running = coroutine.running, isyieldable = coroutine.isyieldable,
    close = coroutine.close,
  },
  os = { time = os.time, date = os.date, clock = os.clock },
  json = json,
}

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- log("msg"), log.info / log.warn / log.error / log.debug: to waybill's log,
-- prefixed with the calling rule's file:line.
local function new_log()
  return setmetatable(
    { debug = host.log_debug, info = host.log_info, warn = host.log_warn, error = host.log_error },
    { __call = host.log_call, __metatable = false })
end

-- env("NAME" [, default]): an environment variable; unset fails the load
-- (every unset name reported at once; offline commands get placeholders)
-- or the handler, unless a default is given.
local env_missing = host.env_missing
local function env_fn(name, default)
  if type(name) ~= "string" then error("env: expected a variable name", 2) end
  local v = getenv(name)
  if v == nil then
    if default ~= nil then return default end
    v = env_missing(name, where(2))
    if v == nil then error("env " .. name .. " is not set", 2) end
  end
  return v
end

local sandbox_env -- forward

-- require "name": modules shipped in waybill's lua/ folder only
-- (e.g. require "taxonomy"); each runs once per generation, sandboxed.
local loaded, loading = {}, {}
local function sandbox_require(name)
  if type(name) ~= "string" then error("require: expected a module name", 2) end
  local v = loaded[name]
  if v ~= nil then return v end
  local ok = name ~= "waybill" and #name <= 64
  for part in (name .. "."):gmatch("(.-)%.") do
    if not part:find("^[%w_]+$") then ok = false end
  end
  local text = ok and readfile(lua_dir .. "/" .. (name:gsub("%.", "/")) .. ".lua")
  if not text then
    error("require: no module '" .. name .. "' in waybill's lua/ library", 2)
  end
  if loading[name] then error("require: module '" .. name .. "' requires itself", 2) end
  local chunk, err = load(text, "@" .. lua_dir .. "/" .. (name:gsub("%.", "/")) .. ".lua", "t",
    sandbox_env())
  if not chunk then error(err, 0) end
  loading[name] = true
  v = chunk(name)
  loading[name] = nil
  if v == nil then v = true end
  loaded[name] = v
  return v
end

-- }====================================================================

-- {====================================================================
-- The rule DSL
-- =====================================================================

local handlers = {} -- { pattern, fn, where } in load order (rules.c copies them)
local lists = {}    -- endpoint lists given to on(), checked once endpoints are known
M.handlers, M.lists = handlers, lists

local send, batch = host.send, host.batch

-- on(pattern, handler | {endpoints...} | "endpoint")
--   pattern: an exact type ("tracking.delivered"), a glob ("tracking.*",
--   "*.delivered"; '*' matches any characters), or "*" for every event.
--   waybill's own events (waybill.delivery.failed, ...) match only patterns
--   that start with "waybill.".
--   Every matching handler runs, in file order, then definition order.
local function on(pattern, target)
  local loc = where(2)
  if sealed then error("on: handlers can only be added while the rules load", 2) end
  -- on({"tracking.*", "shipment.exception"}, ...): one handler for several
  -- patterns (run once for an event any of them matches), kept one per line
  if type(pattern) == "table" then
    local parts = {}
    for i = 1, #pattern do
      local p = pattern[i]
      if type(p) ~= "string" or p == "" or p:find("\n", 1, true) or #p > 200 then
        error("on: the pattern list must hold event types or globs, e.g. \"tracking.*\"", 2)
      end
      parts[i] = p
    end
    if #parts == 0 then error("on: the pattern list is empty", 2) end
    pattern = table.concat(parts, "\n")
  elseif type(pattern) ~= "string" or pattern == "" or pattern:find("\n", 1, true) then
    error("on: the first argument must be an event type or glob, e.g. \"tracking.*\"", 2)
  end
  if type(target) == "string" then target = { target } end
  local fn, list
  if type(target) == "function" then
    fn = target
  elseif type(target) == "table" then
    local names = {}
    for i = 1, #target do
      if type(target[i]) ~= "string" then
        error("on: the endpoint list must hold endpoint names", 2)
      end
      names[i] = target[i]
    end
    if #names == 0 then error("on: the endpoint list is empty", 2) end
    lists[#lists + 1] = { names = names, where = loc }
    fn = function(ev) send(names, ev) end -- fan out the event unchanged
    list = names
  else
    error("on: the second argument must be a function or a list of endpoint names", 2)
  end
  -- list: rules.c may do what fn does without calling it (the event unchanged)
  handlers[#handlers + 1] = { pattern = pattern, fn = fn, where = loc,
    list = list }
end

-- send(endpoint | {endpoints...}, payload [, { headers = {...}, content_type = "..." }])
--   payload: a table (sent as compact JSON; the event itself sends its
--   envelope {id, type, source, source_id, created_at, received_at, data})
--   or a string (sent as is). Implemented in C (rules_api.c): host.send.
--   An empty list sends nothing and encodes nothing.
-- batch(endpoint | {endpoints...}, payload [, window])
--   collects payload into the endpoint's clock-aligned window (its `window`,
--   else 30m in production, 5m in sandbox); window: "10m" or seconds.
-- subscribers(type) -> the endpoint names of the subscriptions (made
--   through POST /v1/environment/webhooks) whose event matches type.
local host_subscribers = host.subscribers
local function subscribers(event_type)
  if type(event_type) ~= "string" then error("subscribers: expected an event type", 2) end
  return json.array(host_subscribers(event_type))
end

-- }====================================================================

-- Every environment made, frozen by seal() once the rules have loaded.
local envs = {}

-- A fresh environment for one file (config, rule file, adapter, module).
function sandbox_env()
  local env = {}
  envs[#envs + 1] = env
  for k, v in pairs(base) do env[k] = v end
  for name, lib in pairs(libs) do env[name] = copy(lib) end
  env.log = new_log()
  env.env = env_fn
  env.require = sandbox_require
  env.on, env.send, env.batch, env.subscribers = on, send, batch, subscribers
  -- load: text only, into this environment unless another is given
  env.load = function(chunk, name, mode, e)
    if e == nil then e = env end
    return load(chunk, name, "t", e)
  end
  env._G = env
  return env
end
M.rule_env = sandbox_env

-- {====================================================================
-- The config DSL
-- =====================================================================

local settings = {}  -- { key, value, where } in assignment order (a later one wins)
local sources, endpoints = {}, {}
local rules_decl

-- Where an assignment was written. Lua places a store on the line where its
-- expression ends, so `admin = {` ... `}` would point at the `}`: look back
-- for the line that starts it, no further than the previous statement.
local config_display, config_path, config_lines
local last_line = 0
local function statement_where(loc, key)
  local file, line = loc:match("^(.*):(%d+)$")
  line = tonumber(line)
  if not line or file ~= config_display then return loc end
  local floor = last_line
  last_line = line
  if type(key) ~= "string" or not key:find("^[%a_][%w_]*$") then return loc end
  if not config_lines then
    config_lines = {}
    for text in ((readfile(config_path) or "") .. "\n"):gmatch("([^\n]*)\n") do
      config_lines[#config_lines + 1] = text
    end
  end
  local pattern = "%f[%w_]" .. key .. "%s*=%f[^=]"
  for l = line, math.max(floor, 1), -1 do
    if (config_lines[l] or ""):find(pattern) then return file .. ":" .. l end
  end
  return loc
end

local function note_line(loc)
  local file, line = loc:match("^(.*):(%d+)$")
  if file == config_display then last_line = tonumber(line) end
end

-- source "name" { ... } / endpoint "name" { ... } (also source("name", {...}))
local function declare(kind, list)
  return function(name, opts)
    local loc = where(2)
    if sealed then error(kind .. ": only in the config file", 2) end
    if type(name) ~= "string" or name == "" then
      error(string_format("%s: expected a name: %s \"name\" { ... }", kind, kind), 2)
    end
    note_line(loc)
    local decl = { name = name, opts = {}, where = loc }
    list[#list + 1] = decl
    local function define(o)
      if type(o) ~= "table" then
        error(string_format("%s %s: the options must be a table", kind, name), 2)
      end
      decl.opts = o
    end
    if opts ~= nil then return define(opts) end
    return define
  end
end

-- rules "dir/": every *.lua in the folder, in name order.
local function rules(dir)
  local loc = where(2)
  if sealed then error("rules: only in the config file", 2) end
  if type(dir) ~= "string" or dir == "" then
    error("rules: expected a folder name, e.g. rules \"rules/\"", 2)
  end
  if rules_decl then error("rules: already set at " .. rules_decl.where, 2) end
  note_line(loc)
  rules_decl = { dir = dir, where = loc }
end

-- The environment of the config file shown as display, read from path.
function M.config_env(display, path)
  config_display, config_path = display, path
  local env = sandbox_env()
  env.source = declare("source", sources)
  env.endpoint = declare("endpoint", endpoints)
  env.rules = rules
  local values = {}
  -- Every global the config assigns is a setting; config.c rejects the
  -- unknown ones (typos) with the line they were written on.
  return setmetatable(env, {
    __newindex = function(_, key, value)
      settings[#settings + 1] = { key = key, value = value, where = statement_where(where(2), key) }
      values[key] = value
    end,
    __index = function(_, key) return values[key] end,
    __metatable = false,
  })
end

function M.declarations()
  return { settings = settings, sources = sources, endpoints = endpoints, rules = rules_decl }
end

-- Tables frozen by seal(): rawset refuses them too (weak keys).
local frozen = setmetatable({}, { __mode = "k" })
local rawset_raw = rawset

local function read_only_text(k)
  return "the rules' globals are read-only while events are routed (use a local): " .. tostring(k)
end

local function read_only(_, k)
  error(read_only_text(k), 2)
end

-- Moves t's fields behind a read-only proxy: t stays the same table (the
-- _ENV of every function of its file) but holds nothing itself; reads go to
-- the hidden copy, writes fail with the writer's file:line, and the
-- metatable cannot be read or replaced.
local function freeze(t)
  local hidden = {}
  for k, v in pairs(t) do hidden[k] = v end
  for k in pairs(hidden) do rawset_raw(t, k, nil) end
  setmetatable(t, { __index = hidden, __newindex = read_only, __metatable = false })
  frozen[t] = true
  return hidden
end

-- rawset that leaves frozen tables alone.
function base.rawset(t, k, v)
  if frozen[t] then error(read_only_text(k), 2) end
  return rawset_raw(t, k, v)
end

-- After loading: no more handlers or declarations, and every environment
-- read-only (with its copies of the libraries), so one event's handler
-- cannot change what the next event's handlers see.
function M.seal()
  sealed = true
  for _, env in ipairs(envs) do
    -- (the config file's environment has a metatable of its own: its
    -- declarations; it runs no handler)
    if getmetatable(env) == nil then
      local hidden = freeze(env)
      for name in pairs(libs) do
        local lib = hidden[name]
        if type(lib) == "table" and not frozen[lib] and getmetatable(lib) == nil then freeze(lib) end
      end
    end
  end
end

-- }====================================================================

return M
