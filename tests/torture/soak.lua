-- soak.lua -- wrk script for the soak (tests/torture/sc_soak.py): a paced,
-- C-speed carrier. Every request is a new ~600-byte atoship event
-- (seed 000's envelope), signed with HMAC-SHA256 through LuaJIT's FFI into
-- libcrypto (as tests/bench/ingest.lua does).
--
-- Environment: WB_SECRET (the source's secret), WB_ID_PREFIX (unique per wrk
-- run: ids are "evt_" PREFIX THREAD COUNTER), WB_THREAD_RATE (events/s per
-- thread; each thread keeps a schedule and waits through wrk's delay() when
-- ahead of it; a thread more than 1 s behind drops that backlog),
-- WB_ACK_DIR (each thread writes waybill's event id, from the body, of every
-- 200 to ACK_DIR/ack.PREFIX.THREAD, and the status of every other answer to
-- ACK_DIR/bad.PREFIX.THREAD; wrk does not say which request an answer is
-- for when a thread has several connections, so the receivers record the
-- same id: the delivered event's "id").

local ffi = require("ffi")
ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
struct wb_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct wb_timespec *tp);
]]

local ok, crypto = pcall(ffi.load, "libcrypto.so.3")
if not ok then crypto = ffi.load("crypto") end

local secret = os.getenv("WB_SECRET") or "torture-secret"
local run_prefix = os.getenv("WB_ID_PREFIX") or string.format("%08x", os.time() % 0xffffffff)
local thread_rate = tonumber(os.getenv("WB_THREAD_RATE") or "0") or 0
local ack_dir = os.getenv("WB_ACK_DIR") or "."

local sha256 = crypto.EVP_sha256()
local md = ffi.new("unsigned char[32]")
local mdlen = ffi.new("unsigned int[1]")
local ts = ffi.new("struct wb_timespec")
local hex = {}
for i = 0, 255 do hex[i] = string.format("%02x", i) end
local digits = {}

local function hmac_hex(body)
    crypto.HMAC(sha256, secret, #secret, body, #body, md, mdlen)
    for i = 0, 31 do digits[i + 1] = hex[md[i]] end
    return table.concat(digits)
end

local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local nthreads = 0

function setup(thread)
    nthreads = nthreads + 1
    thread:set("tid", nthreads) -- a global of the thread's own Lua state
end

local prefix, n, created, acks, bads, next_due, interval
local headers = { ["Content-Type"] = "application/json", ["X-Atoship-Signature"] = "" }

function init(args)
    prefix = string.format("%s%03d", run_prefix, assert(tonumber(rawget(_G, "tid"))))
    n = 0
    created = os.date("!%Y-%m-%dT%H:%M:%SZ")
    acks = assert(io.open(ack_dir .. "/ack." .. prefix, "w"))
    acks:setvbuf("full", 65536)
    bads = assert(io.open(ack_dir .. "/bad." .. prefix, "w"))
    interval = thread_rate > 0 and 1000.0 / thread_rate or 0
end

function request()
    n = n + 1
    local id = string.format("evt_%s%08d", prefix, n)
    local body = '{"id":"' .. id .. '","type":"shipment.delivered","created_at":"' .. created ..
        '","data":{"shipment_id":"shp_' .. prefix .. '","tracking_number":"94001118992234' ..
        string.format("%08d", n % 100000000) ..
        '","carrier":"USPS","service":"Priority Mail","order_id":"order_' .. string.format("%010d", n) ..
        '","delivered_at":"' .. created ..
        '","delivery_location":"Front door, left of the porch next to the blue planter by the mailbox",' ..
        '"signed_by":"RESIDENT"},"metadata":{"organization_id":"org_5f1c2a9b7e3d",' ..
        '"api_version":"2024-01-15","environment":"production","livemode":true,"attempt":1}}'
    headers["X-Atoship-Signature"] = hmac_hex(body)
    return wrk.format("POST", "/hooks/atoship", headers, body)
end

function response(status, hdrs, body)
    local id = status == 200 and body:match('"id":"([^"]+)"')
    if id then
        acks:write(id, "\n")
    else
        bads:write(status, " ", body:sub(1, 100):gsub("\n", " "), "\n")
        bads:flush()
    end
end

function delay()
    if interval == 0 then return 0 end
    local now = now_ms()
    if not next_due or next_due < now - 1000 then next_due = now end
    next_due = next_due + interval
    local d = next_due - now
    if d < 1 then return 0 end
    return math.floor(d)
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
        e.connect, e.read, e.write, e.status, e.timeout))
end
