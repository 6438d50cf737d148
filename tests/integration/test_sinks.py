"""The test harness itself (no gateway needed): the receivers in sinks/ accept
what wb.py's signing helpers produce and reject the rest, so a failure
elsewhere is waybill's, not the harness's."""

import base64
import json
import time

import wb

STD_SECRET = "whsec_" + base64.b64encode(b"harness-secret-0123456789abcdef").decode()


def post(port, body, headers):
    return wb.http_request(port, "POST", "/webhook", body, headers)


def test_standardwebhooks_package_accepts_sign_standard():
    s = wb.NodeSink("standard", STD_SECRET, statuses=[503])
    body = wb.atoship_event()
    h = wb.signed_headers("standard", STD_SECRET, body)
    assert post(s.port, body, h).status == 503  # verified, then the programmed answer
    assert post(s.port, body, h).status == 200  # then its own 200
    wrong = wb.signed_headers("standard", "whsec_" + base64.b64encode(b"other").decode(), body)
    assert post(s.port, body, wrong).status == 401
    old = wb.signed_headers("standard", STD_SECRET, body, ts=time.time() - 600)
    assert post(s.port, body, old).status == 401
    rotating = wb.signed_headers("standard", ["whsec_QUJD", STD_SECRET], body)
    assert post(s.port, body, rotating).status == 200
    got = s.wait_for_count(5)
    assert [r.verdict for r in got] == ["valid", "valid", "invalid", "invalid", "valid"], got
    assert got[2].reason == "No matching signature found", got[2].reason
    assert got[0].body == body and got[0].parsed == json.loads(body)
    assert got[0].headers["webhook-id"] == h["webhook-id"]
    assert wb.verify_standard(STD_SECRET, h, body)
    assert not wb.verify_standard(STD_SECRET, wrong, body)


def test_seed_002_receiver_verdicts():
    s = wb.NodeSink("xsignature", "k1")
    body = wb.atoship_event("tracking.in_transit")
    assert post(s.port, body, wb.signed_headers("generic", "k1", body)).status == 200
    assert post(s.port, body, wb.signed_headers("generic", "k2", body)).status == 403
    # as in the seed, a missing signature makes timingSafeEqual throw: Express's 500
    assert post(s.port, body, {"Content-Type": "application/json"}).status == 500
    s.set_statuses([410])
    assert post(s.port, body, wb.signed_headers("generic", "k1", body)).status == 410
    v = [r.verdict for r in s.wait_for_count(4)]
    assert v[0] == "valid" and v[1] == "invalid" and v[2].startswith("error: ") and v[3] == "valid", v


def test_seed_000_receiver_hashes_the_parsed_body():
    s = wb.NodeSink("atoship-json", "k1")
    body = wb.atoship_event()
    assert post(s.port, body, wb.atoship_headers("k1", body)).status == 200
    assert post(s.port, body, wb.atoship_headers("k2", body)).status == 401
    # valid HMAC of the raw bytes, but not compact: JSON.stringify differs -> rejected
    pretty = json.dumps(json.loads(body), indent=1).encode()
    assert post(s.port, pretty, wb.atoship_headers("k1", pretty)).status == 401
    got = s.wait_for_count(3)
    assert [r.verdict for r in got] == ["valid", "invalid", "invalid"]
    assert got[2].body == pretty


def test_python_sink_programmed_answers():
    s = wb.Sink([500, (429, {"Retry-After": "1"}, b"slow down"), wb.Reply(200, body=b"yes", delay=0.2)])
    codes = [wb.http_request(s.port, "POST", "/hook", b"{}", {"Content-Type": "application/json"})
             for _ in range(4)]
    assert [r.status for r in codes] == [500, 429, 200, 200]
    assert codes[1].headers["retry-after"] == "1" and codes[2].body == b"yes"
    assert s.wait_for_count(4)[0].json() == {}
    assert s.max_concurrency == 1


def test_signing_helpers_match_known_vectors():
    # Standard Webhooks spec example (standard-webhooks/spec): known id/ts/body/secret
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sig = wb.sign_standard(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                           b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", sig
    assert wb.sign_hex("key", "hello") == "9307b3b915efb5171ff14d8cb55fbcc798c6c0ef1456d66ded1a6aa723a58b7b"
    assert len(wb.atoship_event()) > 550
