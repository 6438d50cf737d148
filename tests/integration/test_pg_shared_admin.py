"""Admin actions on one instance take effect on every instance (issue 15):
two real gateways A and B on one real PostgreSQL database (pg.py), a real
sink per endpoint. An endpoint disabled or enabled through A, a
subscription created, rotated or deleted through A: within about a second
B routes and delivers accordingly (B polls the endpoint states and the
subscriptions every second: health.c, subs.c). A retry and a replay made
through A are delivered once, by whichever instance claims them (the
watchdogs' once-a-second read).
"""

import json
import time

import pg
import wb

SECRET = "pg-shared-secret"
ERP_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CRM_SECRET = "whsec_c2VjcmV0LWZvci10aGUtY3JtLWVuZHBvaW50"

# how long an instance may take to follow another's admin action: its
# poll runs every second; the slack is for a loaded machine
FOLLOW = 1.5

RULES = 'on("*", {"erp", "crm"})'
SUBS_RULE = 'on("*", function(ev) send(subscribers(ev.type), ev) end)'


def gateway(db, erp_url, crm_url, erp_extra="", rules=RULES):
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(erp_url)}, secret = {wb.lua(ERP_SECRET)}
                          {erp_extra} }}
        endpoint "crm" {{ url = {wb.lua(crm_url)}, secret = {wb.lua(CRM_SECRET)} }}
        rules "rules/"
    ''', store=db.url)
    return wb.Gateway(cfg, files={"rules/10-main.lua": rules})


def pair(erp, crm, erp_extra="", rules=RULES):
    db = pg.database()
    return (gateway(db, erp.url, crm.url, erp_extra, rules),
            gateway(db, erp.url, crm.url, erp_extra, rules))


def post(g, type="tracking.in_transit", **data):
    body = wb.atoship_event(type, **data)
    r = g.post_atoship(body, SECRET)
    assert r.status == 200, r
    return r.json()["id"], json.loads(body)["id"]


def source_ids(sink, status=200):
    out = []
    for r in list(sink.requests):
        try:
            got = r.json()
        except ValueError:
            continue
        if r.reply == status and isinstance(got, dict) and "source_id" in got:
            out.append(got["source_id"])
    return out


def endpoint_disabled(g, name):
    st, ep = g.admin("GET", "/api/endpoints/" + name)
    assert st == 200, ep
    return ep["disabled"]


def delivery_of(ev, endpoint):
    ds = [d for d in ev["deliveries"] if d["endpoint"] == endpoint]
    assert len(ds) == 1, ev
    return ds[0]


def test_an_endpoint_disabled_and_enabled_through_a_is_held_and_sent_by_b():
    erp, crm = wb.Sink(), wb.Sink()
    a, b = pair(erp, crm)
    _, src0 = post(b, n=0)
    wb.wait_for(lambda: src0 in source_ids(erp) and src0 in source_ids(crm), timeout=10)

    st, body = a.admin("POST", "/api/endpoints/erp/disable")
    assert st == 200 and body["disabled"] is True, body
    # every instance's GET answers the committed state
    wb.wait_for(lambda: endpoint_disabled(b, "erp"), timeout=FOLLOW,
                message="B's GET /api/endpoints/erp says disabled")
    assert endpoint_disabled(a, "erp") and not endpoint_disabled(b, "crm")
    time.sleep(FOLLOW)  # B's memory follows within its poll
    evt, src = post(b, n=1)
    # B routes it held to erp (not pending: no instance sends it), crm gets it
    ev = b.wait_event(evt, lambda e: delivery_of(e, "crm")["status"] == "delivered",
                      timeout=10)
    assert delivery_of(ev, "erp")["status"] == "held", ev
    time.sleep(1.5)
    assert src not in source_ids(erp), "erp got an event B routed after the disable"
    assert delivery_of(a.event(evt), "erp")["status"] == "held"

    st, body = a.admin("POST", "/api/endpoints/erp/enable")
    assert st == 200 and body["disabled"] is False, body
    wb.wait_for(lambda: src in source_ids(erp), timeout=2 * FOLLOW + 1,
                message="the held delivery sent once erp is enabled through A")
    wb.wait_for(lambda: not endpoint_disabled(b, "erp"), timeout=FOLLOW)
    time.sleep(FOLLOW)
    # B routes to it pending again and it is sent
    _, src2 = post(b, n=2)
    wb.wait_for(lambda: src2 in source_ids(erp), timeout=5,
                message="an event posted to B after the enable reaches erp")
    got = source_ids(erp)
    assert got.count(src) == 1 and got.count(src2) == 1, got


def test_a_subscription_created_rotated_and_deleted_through_a_is_followed_by_b():
    erp, crm, sub = wb.Sink(), wb.Sink(), wb.Sink()
    a, b = pair(erp, crm, rules=SUBS_RULE)
    st, created = a.admin("POST", "/v1/environment/webhooks",
                          {"url": sub.url, "event": "track"})
    assert st == 200, created
    sid = created["webhook_id"]
    sub.wait_for_count(1, timeout=5)  # A's verification POST
    time.sleep(FOLLOW)
    evt, src = post(b, n=1)
    wb.wait_for(lambda: src in source_ids(sub), timeout=5,
                message="an event posted to B reaches the subscription made through A")
    st, full = a.admin("GET", "/api/subscriptions/" + sid)
    assert st == 200, full
    req = [r for r in sub.requests if src in source_ids_of(r)][0]
    assert wb.verify_standard(full["secret"], req.headers, req.body)
    # B's event lists it among its deliveries, as A's read does
    assert [d["endpoint"] for d in b.event(evt)["deliveries"]] == [sid]

    # rotated through A: B signs with the new secret only
    st, rot = a.admin("POST", "/api/subscriptions/%s/rotate" % sid)
    assert st == 200 and rot["secret"] != full["secret"], rot
    time.sleep(FOLLOW)
    _, src_r = post(b, n=2)
    wb.wait_for(lambda: src_r in source_ids(sub), timeout=5)
    req = [r for r in sub.requests if src_r in source_ids_of(r)][0]
    assert wb.verify_standard(rot["secret"], req.headers, req.body)
    assert not wb.verify_standard(full["secret"], req.headers, req.body)

    st, _ = a.admin("DELETE", "/v1/environment/webhooks/" + sid)
    assert st == 204
    time.sleep(FOLLOW)
    n = sub.count
    evt3, src3 = post(b, n=3)
    ev3 = b.event(evt3)
    assert ev3["deliveries"] == [], ev3  # B routes to no subscription
    time.sleep(1.5)
    assert sub.count == n and src3 not in source_ids(sub)


def source_ids_of(r):
    try:
        got = r.json()
    except ValueError:
        return []
    return [got["source_id"]] if isinstance(got, dict) and "source_id" in got else []


def test_a_retry_and_a_replay_through_a_of_an_event_b_took_are_delivered_once():
    erp, crm = wb.Sink([500], default=200), wb.Sink()
    a, b = pair(erp, crm, ', retry = { "0s" }')
    evt, src = post(b, n=1)
    ev = b.wait_event(evt, lambda e: delivery_of(e, "erp")["status"] == "failed", timeout=10)
    did = delivery_of(ev, "erp")["id"]
    assert source_ids(erp, 500) == [src]

    st, body = a.admin("POST", "/api/deliveries/%s/retry" % did)
    assert st == 200, body
    wb.wait_for(lambda: src in source_ids(erp), timeout=5, message="the retry delivered")
    b.wait_event(evt, lambda e: delivery_of(e, "erp")["status"] == "delivered", timeout=5)
    # a second retry of a delivered one: refused on either instance
    assert b.admin("POST", "/api/deliveries/%s/retry" % did)[0] == 409

    st, rep = a.admin("POST", "/api/events/%s/replay" % evt)
    assert st == 200, rep
    new = [d["id"] for d in rep["deliveries"] if d["endpoint"] == "erp" and d["id"] != did]
    assert len(new) == 1, rep
    wb.wait_for(lambda: source_ids(erp).count(src) == 2 and source_ids(crm).count(src) == 2,
                timeout=5, message="the replay delivered to both endpoints")
    time.sleep(2.5)  # past both watchdogs' reads and a claim's round trip
    assert source_ids(erp).count(src) == 2 and source_ids(crm).count(src) == 2
    ids = [r.headers["x-waybill-delivery"] for r in erp.requests if r.reply == 200]
    assert sorted(ids) == sorted([did] + new), ids
    for g in (a, b):
        ev = g.event(evt)
        assert sorted(d["status"] for d in ev["deliveries"]) == ["delivered"] * 4, ev
