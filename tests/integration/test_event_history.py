"""What the event pages show from the store (issue 17): GET /api/events'
time window (since/until, found by seq, combined with the other filters
and paging), and which rule handlers matched an event and what each sent,
recorded as routed (schema 6), so a rules reload does not rewrite history.

Every test starts the real binary and real receivers on 127.0.0.1."""
import calendar
import time
import urllib.parse

import wb

ATOSHIP_SECRET = "atoship-history-secret"

TWO_FILES = {
    "rules/10-erp.lua": 'on("tracking.*", {"erp"})\n',
    "rules/20-crm.lua": ('-- crm gets a summary, bi a batch\n'
                         'on("tracking.delivered", function(ev)\n'
                         '  send("crm", { tn = ev.data.tracking_number })\n'
                         '  batch("bi", ev)\n'
                         'end)\n'),
}


def gateway(sinks, files):
    eps = "\n".join(
        f'endpoint "{n}" {{ url = {wb.lua(s.url)}, sign = "hex", secret = "{n}-k"'
        + (', window = "1h"' if n == "bi" else "") + " }"
        for n, s in sinks.items())
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(ATOSHIP_SECRET)} }}
        {eps}
        rules "rules/"
    ''')
    return wb.Gateway(cfg, files=files)


def post(g, type="tracking.delivered", **data):
    r = g.post_atoship(wb.atoship_event(type, **data), ATOSHIP_SECRET)
    assert r.status == 200, r
    return r.json()["id"]


def events(g, **q):
    st, page = g.admin("GET", "/api/events?" + urllib.parse.urlencode(q))
    assert st == 200, (q, page)
    return page


def iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def ms_of(text):
    """An RFC 3339 UTC time as the API writes it -> Unix ms."""
    base, _, frac = text.rstrip("Z").partition(".")
    secs = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return secs * 1000 + (int(frac.ljust(3, "0")) if frac else 0)


# ---- the time window ----

def test_events_in_a_time_window_paged_and_filtered():
    sinks = {"erp": wb.Sink()}
    with gateway(sinks, {"rules/10-erp.lua": 'on("tracking.*", {"erp"})\n'}) as g:
        groups = []
        for i in range(3):
            ids = [post(g, "tracking.delivered" if j % 2 else "tracking.in_transit")
                   for j in range(5)]
            groups.append(ids)
            time.sleep(0.05)
        every = events(g, limit=100)["data"]
        at = {e["id"]: ms_of(e["received_at"]) for e in every}
        assert set(at) == {i for grp in groups for i in grp}, every
        lo = min(at[i] for i in groups[1])
        hi = min(at[i] for i in groups[2])
        assert max(at[i] for i in groups[0]) < lo and max(at[i] for i in groups[1]) < hi
        inside = list(reversed(groups[1]))  # newest first
        # RFC 3339 and Unix ms mean the same window: [since, until)
        for q in ({"since": iso(lo), "until": iso(hi)}, {"since": lo, "until": hi},
                  {"since": iso(lo).replace("Z", "+00:00"), "until": hi}):
            assert [e["id"] for e in events(g, **q)["data"]] == inside, q
        # open at one end
        assert [e["id"] for e in events(g, since=hi)["data"]] == list(reversed(groups[2]))
        assert [e["id"] for e in events(g, until=lo)["data"]] == list(reversed(groups[0]))
        # paged within the window: 2 + 2 + 1, then no cursor
        seen, after = [], None
        for want in (2, 2, 1):
            q = {"since": lo, "until": hi, "limit": 2}
            if after:
                q["after"] = after
            page = events(g, **q)
            assert len(page["data"]) == want, page
            seen += [e["id"] for e in page["data"]]
            after = page["next"]
        assert after is None and seen == inside
        # with the type filter
        delivered = [e["id"] for e in events(g, since=lo, until=hi, type="tracking.delivered")["data"]]
        assert delivered == [i for i in inside if i in groups[1][1::2]], delivered
        # a window with nothing in it
        assert events(g, since=hi + 3600 * 1000)["data"] == []
        # bad values: 400 with a one-line reason
        for q in ({"since": "yesterday"}, {"until": "2026-13-01T00:00:00Z"}, {"since": ""},
                  {"since": "2026-11-23T16:03:38"}, {"until": "12345678901234567"},
                  {"since": hi, "until": lo}, {"since": lo, "until": lo}):
            st, body = g.admin("GET", "/api/events?" + urllib.parse.urlencode(q))
            assert st == 400 and "\n" not in body["error"], (q, st, body)
            assert ("since" in body["error"] or "until" in body["error"]), body


# ---- which rules matched ----

def _sent(ev, g):
    """(rule file:line under the gateway's dir, pattern, [(endpoint, delivery id, batched)])."""
    return [(m["rule"].replace(g.path(""), ""), m["on"], [(s["endpoint"], s.get("delivery"), "window_start" in s)
                                  for s in m["sent"]]) for m in ev["matched"]]


def test_matched_handlers_recorded_and_kept_across_a_reload():
    sinks = {"erp": wb.Sink(), "crm": wb.Sink(), "bi": wb.Sink()}
    with gateway(sinks, TWO_FILES) as g:
        eid = post(g, tracking_number="1ZHIST0001")
        ev = g.wait_event(eid, lambda e: len([d for d in e["deliveries"] if d["id"]]) == 2)
        dlv = {d["endpoint"]: d["id"] for d in ev["deliveries"] if d["id"]}
        assert _sent(ev, g) == [
            ("rules/10-erp.lua:1", "tracking.*", [("erp", dlv["erp"], False)]),
            ("rules/20-crm.lua:2", "tracking.delivered",
             [("crm", dlv["crm"], False), ("bi", None, True)]),
        ], ev["matched"]
        assert ev["matched"][1]["sent"][1]["window_start"].endswith("Z"), ev["matched"]
        assert "failed" not in ev["matched"][0]
        # an event no rule matched: none, and it says so
        other = post(g, "shipment.exception")
        ev = g.event(other)
        assert ev["status"] == "unrouted" and ev["matched"] == [], ev
        # the rules change; the old event still shows how it was routed
        g.remove("rules/20-crm.lua")
        g.write("rules/10-erp.lua", '-- moved\n\non("*", {"crm"})\n')
        assert g.admin("POST", "/api/reload")[0] == 200
        ev = g.event(eid)
        assert _sent(ev, g)[1][0] == "rules/20-crm.lua:2", ev["matched"]
        assert ev["matched"][0]["rule"] == g.path("rules/10-erp.lua") + ":1", ev["matched"]
        assert g.event(other)["matched"] == []
        new = post(g, tracking_number="1ZHIST0002")
        ev = g.wait_event(new, lambda e: len(e["deliveries"]) == 1)
        assert _sent(ev, g) == [("rules/10-erp.lua:3", "*", [("crm", ev["deliveries"][0]["id"], False)])]
        # a replay records its own routing: the new rules, the new delivery
        st, r = g.admin("POST", "/api/events/%s/replay" % other)
        assert st == 200, r
        ev = g.wait_event(other, lambda e: e["matched"] != [])
        assert _sent(ev, g) == [("rules/10-erp.lua:3", "*", [("crm", ev["deliveries"][0]["id"], False)])]


def test_a_failed_handler_is_recorded_as_failed():
    sinks = {"erp": wb.Sink()}
    files = {"rules/10-erp.lua": 'on("tracking.*", {"erp"})\n',
             "rules/20-bad.lua": 'on("tracking.*", function(ev) error("boom") end)\n'}
    with gateway(sinks, files) as g:
        eid = post(g)
        ev = g.event(eid)
        assert ev["status"] == "partial", ev
        assert [(m["rule"].replace(g.path(""), ""), m.get("failed", False), len(m["sent"]))
                for m in ev["matched"]] == \
            [("rules/10-erp.lua:1", False, 1), ("rules/20-bad.lua:1", True, 0)], ev["matched"]


def test_a_test_event_records_no_rules():
    sinks = {"erp": wb.Sink()}
    with gateway(sinks, {"rules/10-erp.lua": 'on("tracking.*", {"erp"})\n'}) as g:
        st, r = g.admin("POST", "/api/endpoints/erp/test", {"type": "tracking.delivered"})
        assert st == 202, r
        assert g.event(r["id"])["matched"] is None  # sent by the admin, not routed by rules
