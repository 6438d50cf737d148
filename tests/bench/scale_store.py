#!/usr/bin/env python3
"""scale_store.py -- fill a waybill store with N pending deliveries, fast.

For `make bench` part 5 (ingest and RSS with 1,000,000 pending deliveries
vs an empty store). The store must already exist with waybill's schema (let
waybill create it: start it once on the file and stop it); this adds N
events and one pending delivery per event, in one transaction, with the
same columns waybill's own inserts fill (store_sqlite_events.c's ST_EVT_INSERT and
ST_DLV_INSERT), so the rows are real: event ids and delivery ids in
waybill's format (`evt_`/`dlv_`, 10 time + 16 random Crockford base32
characters, created during the hour before now, so later ids sort after
them as they would), a ~600-byte atoship body, its headers and data, and a
delivery payload of the event as waybill builds it. waybill counts the
deliveries it inserts itself (per group commit, not by a trigger), so this
adds its rows to delivery_counts the same way.

Every delivery is `pending` for ENDPOINT with next_at in the year 2100, so
nothing claims it while the bench runs: the backlog stays put and waybill's
scheduler, its due index and every ingest see a 1M-row store.

Usage: scale_store.py DB N ENDPOINT   (prints the seconds it took)
"""

import os
import sqlite3
import sys
import time

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
FAR_FUTURE_MS = 4102444800000  # 2100-01-01T00:00:00Z


def id_sql(prefix, t):
    """SQL for an id in waybill's util_id_new format from the time (ms)
    expression t: 10 Crockford characters of time, then 16 of randomness
    (lower-case hex digits are Crockford characters too)."""
    chars = ["substr('%s', ((%s >> %d) & 31) + 1, 1)" % (CROCKFORD, t, 5 * k) for k in range(9, -1, -1)]
    return "'%s' || %s || lower(hex(randomblob(8)))" % (prefix, " || ".join(chars))


def build(db, n, endpoint, source="atoship"):
    """Adds n events, each with one pending delivery to endpoint, in one
    transaction generated inside SQLite (Python would spend seconds per
    100k rows formatting them). Returns seconds."""
    t0 = time.monotonic()
    now = int(time.time() * 1000)
    start = now - 3600 * 1000
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start / 1000))
    # events: i -> t (ms), source_id, data, raw body, headers
    t = "(%d + i * 3600000 / %d)" % (start, max(n, 1))
    data = ("printf('{\"carrier\":\"USPS\",\"delivered_at\":\"%s\",\"delivery_location\":\"Front door,"
            " left of the porch next to the blue planter by the mailbox\",\"order_id\":\"order_%%010d\","
            "\"order_reference\":\"ORD-%%05d\",\"service\":\"Priority Mail\",\"shipment_id\":"
            "\"shp_scale%%07d\",\"signed_by\":\"RESIDENT\",\"tracking_number\":\"94001118992234%%08d\"}',"
            " i, i %% 100000, i %% 10000000, i %% 100000000)" % created)
    raw = ("printf('{\"id\":\"%%s\",\"type\":\"shipment.delivered\",\"created_at\":\"%s\","
           "\"data\":%%s,\"metadata\":{\"organization_id\":\"org_5f1c2a9b7e3d\",\"webhook_endpoint_id\":"
           "\"we_a1b2c3d4e5f6\",\"api_version\":\"2024-01-15\",\"environment\":\"production\","
           "\"livemode\":true,\"attempt\":1}}', sid, data)" % created)
    headers = ("printf('{\"host\":\"127.0.0.1\",\"content-type\":\"application/json\","
               "\"x-atoship-signature\":\"%s\",\"content-length\":\"%d\"}', lower(hex(randomblob(32))),"
               " length(raw))")
    events_sql = (
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < %d),"
        " d AS (SELECT i, %s AS t, printf('evt_scale%%011d', i) AS sid, %s AS data FROM c),"
        " r AS (SELECT *, CAST(%s AS BLOB) AS raw FROM d)"
        " INSERT INTO events(id, source, source_id, type, status, error, created_at, received_at,"
        " headers, data, raw)"
        " SELECT %s, '%s', sid, 'shipment.delivered', 'routed', NULL, '%s', t, %s, data, raw FROM r"
        % (n - 1, t, data, raw, id_sql("evt_", "t"), source, created, headers))
    # one delivery per new event: the payload is the event as waybill builds it
    deliveries_sql = (
        "INSERT INTO deliveries(id, event_id, endpoint, event_type, status, payload, content_type,"
        " headers, attempts, schedule_pos, next_at, lease_until, created_at)"
        " SELECT %s, id, '%s', type, 'pending', CAST(printf('{\"created_at\":\"%%s\",\"data\":%%s,"
        "\"id\":\"%%s\",\"received_at\":\"%%s\",\"source\":\"%%s\",\"source_id\":\"%%s\","
        "\"type\":\"%%s\"}', created_at, data, id,"
        " strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', received_at / 1000.0, 'unixepoch'), source, source_id, type)"
        " AS BLOB), 'application/json', NULL, 0, 0, %d, 0, received_at FROM events WHERE seq > ?"
        " ORDER BY seq" % (id_sql("dlv_", "received_at"), endpoint.replace("'", "''"), FAR_FUTURE_MS))

    con = sqlite3.connect(db, isolation_level=None)
    try:
        # waybill left the store in WAL mode; one big transaction writes its
        # pages once, straight into the database file, then WAL comes back.
        con.execute("PRAGMA journal_mode = DELETE")
        con.execute("PRAGMA synchronous = OFF")
        con.execute("PRAGMA cache_size = -262144")
        con.execute("BEGIN")
        base = con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        if n > 0:
            con.execute(events_sql)
            con.execute(deliveries_sql, (base,))
            con.execute("INSERT INTO delivery_counts(status, n) VALUES ('pending', ?)"
                        " ON CONFLICT(status) DO UPDATE SET n = n + excluded.n", (n,))
        con.execute("COMMIT")
        con.execute("PRAGMA journal_mode = WAL")
    finally:
        con.close()
    return time.monotonic() - t0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: scale_store.py DB N ENDPOINT")
    print("%.1f" % build(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
