"""ShipEngine's webhook routes (SPEC section 8), exactly as ShipEngine's
published OpenAPI description (npm shipengine-openapi) has them, so that a
client written for ShipEngine works unchanged; and /api/subscriptions, where
the signing secret ShipEngine's shape has no field for is read and rotated.

Every answer is validated with ajv against that package's own schemas
(shipengine_check.js). Requests carry the token as ShipEngine's clients do,
in an API-Key header."""
import json
import os
import re
import subprocess

import wb
from test_admin import ATOSHIP_SECRET, DEFAULT_RULES, closed_port_url, gateway, ingest

W = "/v1/environment/webhooks"
SE_ID = re.compile(r"^se(-[a-z0-9]+)+$")


def se_check(items):
    """[(operation, response) or (schema name, response) or (operation,
    {"request": body})] -> the checker's verdicts, None = valid."""
    payload = []
    for name, r in items:
        if isinstance(r, dict):
            payload.append({"operation": name, "request": r["request"]})
        elif name.endswith("_body"):
            payload.append({"schema": name, "body": r.body.decode()})
        else:
            payload.append({"operation": name, "status": r.status,
                            "content_type": r.headers.get("content-type", ""), "body": r.body.decode()})
    p = subprocess.run(["node", os.path.join(wb.HERE, "shipengine_check.js")],
                       input=json.dumps(payload).encode(), capture_output=True, timeout=60,
                       env=dict(os.environ, NODE_PATH=wb.NODE_MODULES))
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def se(g, method, path, body=None, key=True):
    """A request as a ShipEngine client makes it: the token in API-Key."""
    h = {}
    if key:
        h["API-Key"] = g.token if key is True else key
    if body is not None:
        body = body if isinstance(body, str) else json.dumps(body)
        h["Content-Type"] = "application/json"
    return wb.http_request(g.admin_port, method, path, body, h)


def test_webhook_routes_answer_as_shipengines_description_says():
    ok, other, failing = wb.Sink(), wb.Sink(), wb.Sink(default=500)
    g = gateway(ok.url, rules=DEFAULT_RULES)
    checked = []

    def expect(op, r, status, body=None):
        assert r.status == status, (op, r)
        if body is not None:
            assert r.json() == body, r
        checked.append((op, r))
        return r

    expect("list_webhooks", se(g, "GET", W), 200, [])             # a bare array
    req = {"url": ok.url, "event": "track"}
    checked.append(("create_webhook", {"request": req}))          # what a client sends is valid too
    a = expect("create_webhook", se(g, "POST", W, req), 200).json()
    assert set(a) == {"webhook_id", "url", "event"} and a["url"] == ok.url and a["event"] == "track"
    assert SE_ID.match(a["webhook_id"]) and len(a["webhook_id"]) <= 25, a
    r = expect("create_webhook", se(g, "POST", W, {"url": other.url, "event": "report_complete"}), 200)
    b = r.json()
    assert b["event"] == "report_complete" and b["webhook_id"] != a["webhook_id"]
    # errors, each in ShipEngine's shape
    r = expect("create_webhook", se(g, "POST", W, {"url": other.url, "event": "track"}), 409)
    assert r.json()["errors"][0]["error_code"] == "webhook_event_type_conflict", r
    expect("create_webhook", se(g, "POST", W, {"url": other.url, "event": "tracking.*"}), 409)
    for bad in ("{not json", "[1, 2]", {"url": "ftp://x/", "event": "batch"}, {"url": ok.url},
                {"url": ok.url, "event": "Not An Event"},
                {"url": ok.url, "event": "batch", "secret": "whsec_AAAA"}):
        expect("create_webhook", se(g, "POST", W, bad), 400)
    r = se(g, "POST", W, {"url": failing.url, "event": "batch"})
    assert r.status == 422 and "answered 500" in r.json()["errors"][0]["message"], r
    checked.append(("error_response_body", r))
    r = se(g, "POST", W, {"url": closed_port_url(), "event": "batch"})
    assert r.status == 422, r
    checked.append(("error_response_body", r))
    # read, list
    expect("get_webhook_by_id", se(g, "GET", W + "/" + a["webhook_id"]), 200, a)
    expect("get_webhook_by_id", se(g, "GET", W + "/se-nope"), 404)
    expect("list_webhooks", se(g, "GET", W), 200, [a, b])
    # update: 204, no body; the new URL verified first
    n = other.count
    r = expect("update_webhook", se(g, "PUT", W + "/" + a["webhook_id"], {"url": other.url}), 204)
    assert r.body == b"" and other.count == n + 1
    assert other.requests[n].json()["type"] == "webhook.verification"
    expect("get_webhook_by_id", se(g, "GET", W + "/" + a["webhook_id"]), 200, dict(a, url=other.url))
    r = se(g, "PUT", W + "/" + a["webhook_id"], {"url": failing.url})   # kept: the old URL stays
    assert r.status == 422, r
    checked.append(("error_response_body", r))
    expect("update_webhook", se(g, "PUT", W + "/se-nope", {"url": ok.url}), 404)
    expect("update_webhook", se(g, "PUT", W + "/" + a["webhook_id"], {"nourl": 1}), 400)
    expect("update_webhook", se(g, "PUT", W + "/" + a["webhook_id"], {}), 204)   # nothing to change
    expect("get_webhook_by_id", se(g, "GET", W + "/" + a["webhook_id"]), 200, dict(a, url=other.url))
    # delete: 204, then 404
    expect("delete_webhook", se(g, "DELETE", W + "/" + b["webhook_id"]), 204)
    expect("delete_webhook", se(g, "DELETE", W + "/" + b["webhook_id"]), 404)
    expect("list_webhooks", se(g, "GET", W), 200, [dict(a, url=other.url)])
    # the token: missing or wrong in API-Key, or as a bearer token -> 401 in ShipEngine's shape
    for r in (se(g, "GET", W, key=False), se(g, "GET", W, key="wrong"),
              se(g, "DELETE", W + "/" + a["webhook_id"], key=g.token + "x"),
              wb.http_request(g.admin_port, "GET", W, None, {"Authorization": "Bearer wrong"})):
        assert r.status == 401 and r.json()["errors"][0]["error_type"] == "security", r
        assert g.token not in r.body.decode()
        checked.append(("error_response_body", r))
    assert wb.http_request(g.admin_port, "GET", W, None,
                           {"Authorization": "Bearer " + g.token}).json() == [dict(a, url=other.url)]
    r = se(g, "PATCH", W)
    assert r.status == 405, r
    checked.append(("error_response_body", r))
    verdicts = se_check(checked)
    bad = ["%s %s: %s" % (name, getattr(r, "status", "request"), v)
           for (name, r), v in zip(checked, verdicts) if v]
    assert not bad, "\n".join(bad)
    # every error carries its own request id, a UUID
    ids = [json.loads(r.body)["request_id"] for name, r in checked
           if not isinstance(r, dict) and r.status >= 400]
    assert len(ids) == len(set(ids)) > 10


def test_the_check_is_not_a_rubber_stamp():
    # Answers in the old shapes each fail against ShipEngine's schemas.
    R = wb.Response
    h = wb.Headers([("content-type", "application/json")])
    good = {"webhook_id": "se-1a2b", "url": "http://x/", "event": "track"}
    cases = [("create_webhook", R(200, h, json.dumps(good).encode())),                     # valid
             ("create_webhook", R(200, h, json.dumps(dict(good, secret="whsec_x")).encode())),
             ("create_webhook", R(201, h, json.dumps(good).encode())),
             ("get_webhook_by_id", R(200, h, json.dumps(dict(good, webhook_id="sub_01x")).encode())),
             ("list_webhooks", R(200, h, json.dumps({"data": [good], "next": None}).encode())),
             ("get_webhook_by_id", R(404, h, b'{"error": "no such webhook"}')),
             ("update_webhook", R(200, h, json.dumps(good).encode())),
             ("create_webhook", {"request": {"url": "http://x/", "event": "track", "secret": "s"}})]
    verdicts = se_check(cases)
    assert verdicts[0] is None, verdicts[0]
    assert all(verdicts[1:]), verdicts


def test_subscription_secret_is_read_and_rotated_through_api_subscriptions():
    verifier = wb.Sink()
    g = gateway(verifier.url, rules=DEFAULT_RULES)
    st, a = g.admin("POST", W, {"url": verifier.url, "event": "track"})
    assert st == 200, a
    st, lst = g.admin("GET", "/api/subscriptions")
    assert st == 200 and lst["next"] is None, lst
    assert [set(s) for s in lst["data"]] == [{"id", "url", "event", "created_at"}]  # no secrets in lists
    st, sub = g.admin("GET", "/api/subscriptions/" + a["webhook_id"])
    assert st == 200 and sub["id"] == a["webhook_id"] and sub["url"] == verifier.url, sub
    old = sub["secret"]
    assert old.startswith("whsec_")
    probe = verifier.wait_for_count(1)[0]          # the verification POST, signed with it
    assert wb.verify_standard(old, probe.headers, probe.body)
    # a receiver verifying with the standardwebhooks package; PUT re-verifies
    receiver = wb.NodeSink("standard", old)
    r = se(g, "PUT", W + "/" + a["webhook_id"], {"url": receiver.url})
    assert r.status == 204, r
    assert receiver.wait_for_count(1)[0].valid
    ingest(g, "shipment.delivered")   # not a tracking event: not sent
    eid = ingest(g, "tracking.delivered")
    got = receiver.wait_for_count(2)[1]
    assert got.valid and got.json()["id"] == eid, got.reason
    # rotate: the new secret answered; what is sent from then on is signed with it only
    st, rot = g.admin("POST", "/api/subscriptions/%s/rotate" % a["webhook_id"])
    assert st == 200 and set(rot) == {"id", "url", "event", "created_at", "secret"}, rot
    assert rot["secret"].startswith("whsec_") and rot["secret"] != old
    assert rot["created_at"] == sub["created_at"]
    st, again = g.admin("GET", "/api/subscriptions/" + a["webhook_id"])
    assert again["secret"] == rot["secret"]
    plain = wb.Sink()
    assert se(g, "PUT", W + "/" + a["webhook_id"], {"url": plain.url}).status == 204
    assert wb.verify_standard(rot["secret"], plain.wait_for_count(1)[0].headers, plain.requests[0].body)
    eid = ingest(g, "tracking.in_transit")
    got = plain.wait_for_count(2)[1]
    assert got.json()["id"] == eid
    assert wb.verify_standard(rot["secret"], got.headers, got.body)
    assert not wb.verify_standard(old, got.headers, got.body)
    # a secret cannot be set through ShipEngine's PUT: 400, nothing changed
    r = se(g, "PUT", W + "/" + a["webhook_id"], {"url": plain.url, "secret": old})
    assert r.status == 400 and "rotate" in r.json()["errors"][0]["message"], r
    assert g.admin("GET", "/api/subscriptions/" + a["webhook_id"])[1]["secret"] == rot["secret"]
    # durable: after a kill -9 the rotated secret still signs (what was in
    # flight may be sent again: at least once)
    g.kill9()
    g.restart()
    assert g.admin("GET", "/api/subscriptions/" + a["webhook_id"])[1]["secret"] == rot["secret"]
    eid = ingest(g, "tracking.delivered")
    wb.wait_for(lambda: any(q.json().get("id") == eid for q in plain.requests), message="the event after the restart")
    assert all(wb.verify_standard(rot["secret"], q.headers, q.body) for q in plain.requests)
    # unknown ids, bad paging, the token
    for method, path in (("GET", "/api/subscriptions/se-nope"),
                         ("POST", "/api/subscriptions/se-nope/rotate")):
        st, body = g.admin(method, path)
        assert st == 404 and body["error"], (path, st, body)
    st, body = g.admin("GET", "/api/subscriptions?limit=0")
    assert st == 400 and body["error"], body
    for method, path in (("GET", "/api/subscriptions"), ("GET", "/api/subscriptions/" + a["webhook_id"]),
                         ("POST", "/api/subscriptions/%s/rotate" % a["webhook_id"])):
        st, body = g.admin(method, path, token="wrong")
        assert st == 401 and set(body) == {"error"}, (path, st, body)
        assert rot["secret"] not in json.dumps(body)
    assert g.admin("GET", "/api/subscriptions/" + a["webhook_id"])[1]["secret"] == rot["secret"]


def test_subscriptions_list_pages():
    sink = wb.Sink()
    g = gateway(sink.url, rules=DEFAULT_RULES)
    made = []
    for ev in ("track", "batch", "rate", "report_complete", "carrier_connected"):
        st, w = g.admin("POST", W, {"url": sink.url, "event": ev})
        assert st == 200, w
        made.append(w["webhook_id"])
    seen, after = [], ""
    while True:
        st, page = g.admin("GET", "/api/subscriptions?limit=2" + ("&after=" + after if after else ""))
        assert st == 200 and len(page["data"]) <= 2, page
        seen += [s["id"] for s in page["data"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == made
    # ShipEngine's list has them all, oldest first, events as given
    assert [(w["webhook_id"], w["event"]) for w in se(g, "GET", W).json()] == \
        list(zip(made, ("track", "batch", "rate", "report_complete", "carrier_connected")))
