"""Smoke: a signed atoship event goes in, a Standard-Webhooks-signed delivery comes out."""

import json

import wb

ERP_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signed_event_is_delivered():
    sink = wb.Sink()
    g = wb.Gateway(wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = "s3cret" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)}, sign = "standard" }}
        rules "rules/"
    '''), files={"rules/10-main.lua": 'on("*", {"erp"})\n'})

    body = wb.atoship_event("shipment.delivered")
    r = g.post("/hooks/atoship", body, wb.atoship_headers("s3cret", body))  # r = (status, headers, body)
    assert r.status == 200, r
    event_id = r.json()["id"]
    assert event_id.startswith("evt_"), r.json()

    req = sink.wait_for_count(1, timeout=5)[0]
    assert req.method == "POST" and req.path == "/hook"
    assert req.headers["Content-Type"].startswith("application/json")
    assert req.headers["X-Waybill-Event-Type"] == "shipment.delivered"
    assert req.headers["X-Waybill-Delivery"], req.headers
    assert req.headers["X-Waybill-Attempt"] == "1"
    assert req.headers["User-Agent"].startswith("waybill/")
    assert wb.verify_standard(ERP_SECRET, req.headers, req.body), req.headers
    assert req.headers["webhook-id"] == req.headers["X-Waybill-Delivery"]
    assert req.json()["data"] == json.loads(body)["data"]
    # the event is visible in the admin API with its delivery
    ev = g.wait_event(event_id, lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "delivered")
    assert ev["source"] == "atoship" and ev["source_id"] == json.loads(body)["id"], ev


def test_bad_signature_is_401_and_not_delivered():
    sink = wb.Sink()
    g = wb.Gateway(wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = "s3cret" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)} }}
        rules "rules/"
    '''), files={"rules/10-main.lua": 'on("*", {"erp"})\n'})

    body = wb.atoship_event()
    r = g.post("/hooks/atoship", body, wb.atoship_headers("wrong", body))
    assert r.status == 401, r
    assert b"wrong" not in r.body
    r = g.post("/hooks/atoship", body, wb.atoship_headers("s3cret", body))  # the real one still goes through
    assert r.status == 200, r
    sink.wait_for_count(1)
    assert sink.count == 1
