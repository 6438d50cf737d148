-- ingest.lua -- wrk script: every request a new ~600-byte atoship event
-- (seed 000's envelope, a fresh "evt_" id each time) signed with its own
-- HMAC-SHA256, computed here through LuaJIT's FFI calling libcrypto's HMAC()
-- (about 1.5 us per request on wrk's core, not the server's).
--
-- Environment: WB_SECRET (default "bench-secret"), WB_SIG_HEADER (default
-- "X-Atoship-Signature"; the Node seed-002 receiver wants "X-Signature"),
-- WB_PATH (default "/hooks/atoship").
-- done() prints one line "WRKJSON {...}" (requests, duration, percentiles in
-- microseconds, errors by kind) that tests/bench/bench.py reads.

local ffi = require("ffi")
ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
]]

local ok, crypto = pcall(ffi.load, "libcrypto.so.3")
if not ok then crypto = ffi.load("crypto") end

local secret = os.getenv("WB_SECRET") or "bench-secret"
local sig_header = os.getenv("WB_SIG_HEADER") or "X-Atoship-Signature"
local path = os.getenv("WB_PATH") or "/hooks/atoship"

local sha256 = crypto.EVP_sha256()
local md = ffi.new("unsigned char[32]")
local mdlen = ffi.new("unsigned int[1]")
local hex = {}
for i = 0, 255 do hex[i] = string.format("%02x", i) end
local digits = {}

local function hmac_hex(body)
    crypto.HMAC(sha256, secret, #secret, body, #body, md, mdlen)
    for i = 0, 31 do digits[i + 1] = hex[md[i]] end
    return table.concat(digits)
end

local threads = {}
local tid = 0

function setup(thread)
    tid = tid + 1
    thread:set("tid", tid)
    table.insert(threads, thread)
end

local prefix, n, created
local headers = { ["Content-Type"] = "application/json" }

function init(args)
    -- unique across threads and runs: start time, thread number, counter;
    -- and across wrk processes started in the same second (several
    -- instances loaded at once) by WB_ID_SALT
    prefix = string.format("%s%08x%02d", os.getenv("WB_ID_SALT") or "", os.time() % 0xffffffff,
        tonumber(tid) or 0)
    n = 0
    created = os.date("!%Y-%m-%dT%H:%M:%SZ")
end

function request()
    n = n + 1
    local id = string.format("evt_%s%08d", prefix, n)
    local body = '{"id":"' .. id .. '","type":"shipment.delivered","created_at":"' .. created ..
        '","data":{"shipment_id":"shp_' .. prefix .. '","tracking_number":"94001118992234' ..
        string.format("%08d", n % 100000000) ..
        '","carrier":"USPS","service":"Priority Mail","order_id":"order_' .. string.format("%010d", n) ..
        '","order_reference":"ORD-' .. string.format("%05d", n % 100000) ..
        '","delivered_at":"' .. created ..
        '","delivery_location":"Front door, left of the porch next to the blue planter by the mailbox",' ..
        '"signed_by":"RESIDENT"},"metadata":{"organization_id":"org_5f1c2a9b7e3d",' ..
        '"webhook_endpoint_id":"we_a1b2c3d4e5f6","api_version":"2024-01-15","environment":"production",' ..
        '"livemode":true,"attempt":1}}'
    headers[sig_header] = hmac_hex(body)
    return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
        '"max_us":%d,"mean_us":%.1f,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
        summary.requests, summary.duration, summary.bytes,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
        e.connect, e.read, e.write, e.status, e.timeout))
end
