"""The dashboard (issue 17) in a real browser: Debian's chromium, headless,
driven by puppeteer-core (dashboard.js) against the real binary and real
sinks. dashboard.js asks this side for what a browser cannot do (post a
signed carrier event, flip the failing sink, break the rules, run `waybill
route`); every step it passes prints `OK step`.

The screenshots it takes (tests/integration/screenshots/overview.png and
event.png, shown in the README) are rewritten by every run."""
import json
import os
import random
import shutil
import subprocess
import threading
import time

import wb

TIMEOUT = 150
ATOSHIP_SECRET = "atoship-dash-secret"
SHOTS = os.path.join(wb.HERE, "screenshots")
DRIVER = os.path.join(wb.HERE, "dashboard.js")
XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "<script>window.__xss=1</script>"

RULES = '''
on("*", { "erp" })
on("shipment.delivered", function(ev)
  send("crm", { order = ev.data.order_id, tracking = ev.data.tracking_number })
end)
on("tracking.*", function(ev) batch("bi", ev) end)
'''

BROKEN = '''
on("*", function(ev)
  send("erp", ev
end)
'''

STEPS = ["headers", "sign in with a wrong token", "sign in",
         "a cross-origin state change is refused",
         "an event appears in Events without a reload", "find an event by its tracking number",
         "untrusted payloads render as text",
         "the event page shows deliveries and attempts",
         "the event page shows the rules that matched",
         "retry a failed delivery from Deliveries",
         "the time filter finds an event older than the newest 100", "disable, enable, test an endpoint",
         "a broken rules file: Reload shows file:line, old rules still route",
         "a dry run shows what waybill route prints", "batches and subscriptions",
         "overview, narrow screen, dark mode", "sign out"]


def _chromium():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    raise AssertionError("chromium is not installed (make test-deps installs it)")


class Harness:
    """What dashboard.js asks for, answered against the gateway and sinks."""

    def __init__(self):
        self.flip = threading.Event()
        self.erp = wb.Sink(lambda req: 200 if self.flip.is_set() else 500)
        self.crm = wb.Sink()
        self.bi = wb.Sink()
        self.verify_ok = wb.Sink()
        self.verify_bad = wb.Sink(default=500)
        cfg = wb.config(f'''
            source "atoship" {{ verify = "atoship", secret = {wb.lua(ATOSHIP_SECRET)} }}
            endpoint "erp" {{ url = {wb.lua(self.erp.url)}, sign = "hex", secret = "erp-k",
                              retry = {{ "0s" }} }}
            endpoint "crm" {{ url = {wb.lua(self.crm.url)}, sign = "hex", secret = "crm-k" }}
            endpoint "bi" {{ url = {wb.lua(self.bi.url)}, sign = "hex", secret = "bi-k",
                             window = "1h" }}
            rules "rules/"
        ''')
        self.g = wb.Gateway(cfg, files={"rules/10-main.lua": RULES})
        self.sinks = {"erp": self.erp, "crm": self.crm, "bi": self.bi}

    def post(self, type="shipment.delivered", **data):
        body = wb.atoship_event(type, **data)
        r = self.g.post_atoship(body, ATOSHIP_SECRET)
        assert r.status == 200, r
        return r.json()["id"]

    def answer(self, q):
        do = q["do"]
        if do == "post":
            tn = "1ZDASH%010d" % random.randint(0, 10**10 - 1)
            return {"id": self.post(signed_by=XSS_IMG, delivery_location=XSS_SCRIPT,
                                    tracking_number=tn), "tracking_number": tn}
        if do == "flip":
            self.flip.set()
            return {}
        if do == "count":
            return {"count": self.sinks[q["sink"]].count}
        if do == "endpoint":
            st, body = self.g.admin("GET", "/api/endpoints/" + q["name"])
            assert st == 200, body
            return body
        if do == "wait_count":
            sink = self.sinks[q["sink"]]
            reqs = sink.wait_for_count(q["n"])
            wb.wait_for(lambda: any(r.headers.get("X-Waybill-Event-Type") == "shipment.exception"
                                    for r in sink.requests), timeout=5,
                        message="a shipment.exception test event at " + q["sink"])
            return {"types": [r.headers.get("X-Waybill-Event-Type") for r in sink.requests],
                    "n": len(reqs)}
        if do == "break_rules":
            self.g.write("rules/20-broken.lua", BROKEN)
            return {"file": "20-broken.lua"}
        if do == "post_and_wait":
            n = self.erp.count
            self.post()
            self.erp.wait_for_count(n + 1)
            return {"delivered": True}
        if do == "fix_rules":
            self.g.remove("rules/20-broken.lua")
            return {}
        if do == "route_body":
            body = wb.atoship_event("shipment.delivered")
            self.g.write("dry.json", body)
            r = subprocess.run([wb._bin(), "route", "-c", self.g.config_path, "--source", "atoship",
                                self.g.path("dry.json")], capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            route = json.loads(r.stdout)
            assert [d["endpoint"] for d in route["deliveries"]] == ["erp", "crm"], route
            return {"body": body.decode() if isinstance(body, bytes) else body, "route": route}
        if do == "post_old_then_many":
            old = self.post("shipment.exception")
            at = self.g.event(old)["received_at"]
            time.sleep(1.1)  # the rest are received in a later second than the old one
            posted = [self.post("shipment.exception") for _ in range(q["n"])]
            return {"id": old, "received_at": at, "posted": posted}
        if do == "batch_event":
            return {"window": self.post("tracking.in_transit")}
        if do == "sub_urls":
            return {"url": self.verify_ok.url, "bad": self.verify_bad.url}
        raise ValueError("unknown ask " + do)


@wb.timeout(TIMEOUT)
def test_dashboard_in_chromium():
    chromium = _chromium()
    h = Harness()
    os.makedirs(SHOTS, exist_ok=True)
    env = dict(os.environ, CHROMIUM=chromium, NODE_PATH=wb.NODE_MODULES)
    admin = "http://127.0.0.1:%d" % h.g.admin_port
    p = subprocess.Popen(["node", DRIVER, admin, h.g.token, SHOTS], cwd=wb.HERE, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    killer = threading.Timer(TIMEOUT - 10, p.kill)
    killer.start()
    out, passed = [], []
    t0 = time.monotonic()
    try:
        for line in p.stdout:
            line = line.rstrip("\n")
            out.append(line)
            if line.startswith("ASK "):
                try:
                    a = h.answer(json.loads(line[4:]))
                except Exception as e:  # the step fails in the browser with this reason
                    a = {"error": "%s: %s" % (type(e).__name__, e)}
                p.stdin.write(json.dumps(a) + "\n")
                p.stdin.flush()
            elif line.startswith("OK "):
                passed.append(line[3:])
        p.wait(10)
    finally:
        killer.cancel()
        if p.poll() is None:
            p.kill()
    err = p.stderr.read()
    took = time.monotonic() - t0
    assert p.returncode == 0 and out and out[-1] == "DONE", \
        "dashboard.js failed (%.1fs):\n%s\n%s" % (took, "\n".join(out), err[-3000:])
    assert passed == STEPS, passed
    for name in ("overview.png", "event.png"):
        with open(os.path.join(SHOTS, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


# ---- the dashboard's routes without a browser: every rejection path ----

def _session(g):
    origin = {"Origin": "http://127.0.0.1:%d" % g.admin_port}
    r = wb.http_request(g.admin_port, "POST", "/login", json.dumps({"token": g.token}),
                        dict(origin, **{"Content-Type": "application/json"}))
    assert r.status == 204, r
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie, cookie
    assert "Secure" not in cookie, cookie  # plain HTTP here
    return {"Cookie": cookie.split(";")[0]}, origin


def test_dashboard_sign_in_and_csrf():
    h = Harness()
    g, port = h.g, h.g.admin_port
    origin = {"Origin": "http://127.0.0.1:%d" % port}
    # the files: no auth, strict headers, a content-hash ETag that revalidates
    r = wb.http_request(port, "GET", "/")
    assert r.status == 200 and b"<script src=\"/app.js\"" in r.body, r
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    weight = 0
    for path in ("/", "/app.js", "/app.css", "/favicon.svg"):
        a = wb.http_request(port, "GET", path)
        assert a.status == 200 and a.headers["ETag"].startswith('"'), (path, a)
        weight += len(a.body)
        again = wb.http_request(port, "GET", path, headers={"If-None-Match": a.headers["ETag"]})
        assert again.status == 304 and again.body == b"", (path, again)
    assert weight < 300 * 1024, weight
    assert wb.http_request(port, "GET", "/nope.js").status == 401  # not a file: the API's 401
    # a wrong token: 401, no cookie; another origin or none: 403; no token: 400
    bad = wb.http_request(port, "POST", "/login", json.dumps({"token": "wrong"}), origin)
    assert bad.status == 401 and "Set-Cookie" not in bad.headers and bad.json() == {"error": "wrong token"}
    assert wb.http_request(port, "POST", "/login", json.dumps({"token": g.token})).status == 403
    assert wb.http_request(port, "POST", "/login", json.dumps({"token": g.token}),
                           {"Origin": "http://evil.example"}).status == 403
    assert wb.http_request(port, "POST", "/login", "{}", origin).status == 400
    assert wb.http_request(port, "GET", "/session").json() == {"signed_in": False}
    cookie, origin = _session(g)
    assert wb.http_request(port, "GET", "/session", headers=cookie).json() == {"signed_in": True}
    # the cookie reads; a change needs the listener's own Origin
    assert wb.http_request(port, "GET", "/api/status", headers=cookie).status == 200
    assert wb.http_request(port, "POST", "/api/reload", headers=cookie).status == 403
    r = wb.http_request(port, "POST", "/api/reload", headers=dict(cookie, Origin="http://evil.example"))
    assert r.status == 403, r
    r = wb.http_request(port, "POST", "/api/reload", headers=dict(cookie, **origin))
    assert r.status == 200 and r.json()["ok"] is True, r
    # a made-up cookie is no session; the bearer API is unchanged
    fake = {"Cookie": "waybill_session=" + "ab" * 32}
    assert wb.http_request(port, "GET", "/api/status", headers=fake).status == 401
    assert g.admin("GET", "/api/status")[0] == 200
    assert g.admin("GET", "/api/status", token=None)[0] == 401
    assert g.admin("POST", "/api/reload")[0] == 200  # bearer: no Origin needed
    # at most 64 sessions: the 65th sign-in replaces the oldest one
    more = [_session(g)[0] for _ in range(64)]
    assert wb.http_request(port, "GET", "/api/status", headers=cookie).status == 401
    for c in (more[0], more[-1]):
        assert wb.http_request(port, "GET", "/api/status", headers=c).status == 200
    cookie = more[-1]
    # sign out: the cookie is dead, also when replayed
    assert wb.http_request(port, "POST", "/logout", headers=cookie).status == 403  # no Origin
    r = wb.http_request(port, "POST", "/logout", headers=dict(cookie, **origin))
    assert r.status == 204 and "Max-Age=0" in r.headers["Set-Cookie"], r
    assert wb.http_request(port, "GET", "/api/status", headers=cookie).status == 401


def test_dashboard_api_routes():
    h = Harness()
    g = h.g
    eid = h.post()
    h.post("tracking.in_transit")
    h.crm.wait_for_count(1)
    # series: the hour's points, the last one counting what arrived
    st, s = g.admin("GET", "/api/series")
    assert st == 200 and s["interval_s"] == 10 and s["points"], s
    last = s["points"][-1]
    assert last["received_per_s"] > 0 and last["pending"] >= 0, s
    # the attempts' latency: a histogram bucket's bound, p99 at least p50
    pts = wb.wait_for(lambda: [p for p in g.admin("GET", "/api/series")[1]["points"]
                               if p["p50_ms"] is not None], message="a point with attempt latencies")
    p = pts[-1]
    assert p["p50_ms"] in (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 10001), p
    assert p["p99_ms"] >= p["p50_ms"], p
    # rules: files, sources, the last reload's file:line
    st, r = g.admin("GET", "/api/rules")
    assert st == 200 and r["files"] == ["10-main.lua"] and r["sources"] == ["atoship"], r
    assert r["last_reload_error"] is None
    g.write("rules/20-broken.lua", BROKEN)
    assert g.admin("POST", "/api/reload")[0] == 422
    st, r = g.admin("GET", "/api/rules")
    assert r["files"] == ["10-main.lua", "20-broken.lua"] and r["reload_failures"] == 1, r
    assert "20-broken.lua:" in r["last_reload_error"], r
    g.remove("rules/20-broken.lua")
    # batches: bi's open window with its item
    st, b = g.admin("GET", "/api/batches")
    assert st == 200 and [(w["endpoint"], w["items"]) for w in b["data"]] == [("bi", 1)], b
    assert b["data"][0]["window_ms"] == 3600000
    # dry run: a stored event, then a pasted body, as `waybill route` prints it
    st, d = g.admin("POST", "/api/dryrun", {"event_id": eid})
    assert st == 200 and d["status"] == "routed", d
    assert [x["endpoint"] for x in d["deliveries"]] == ["erp", "crm"], d
    body = wb.atoship_event("shipment.delivered")
    g.write("dry.json", body)
    out = subprocess.run([wb._bin(), "route", "-c", g.config_path, "--source", "atoship",
                          g.path("dry.json")], capture_output=True, timeout=30, check=True).stdout
    route = json.loads(out)
    st, d = g.admin("POST", "/api/dryrun", {"source": "atoship", "body": body.decode()})
    assert st == 200, d

    def strip(p):
        return {k: v for k, v in p.items() if k not in ("id", "received_at")} if isinstance(p, dict) else p
    assert [(x["endpoint"], strip(x["payload"]), x["headers"]) for x in d["deliveries"]] == \
        [(x["endpoint"], strip(x["payload"]), x["headers"]) for x in route["deliveries"]], (d, route)
    # nothing was stored or sent by the dry runs
    st, page = g.admin("GET", "/api/events?source=atoship")
    assert len(page["data"]) == 2, page
    # rejections
    assert g.admin("POST", "/api/dryrun", {"event_id": "evt_nope"})[0] == 404
    assert g.admin("POST", "/api/dryrun", {"source": "nope", "body": "{}"})[0] == 400
    assert g.admin("POST", "/api/dryrun", {})[0] == 400
    assert g.admin("POST", "/api/dryrun", "not json")[0] == 400
    st, d = g.admin("POST", "/api/dryrun", {"source": "atoship", "body": "not json"})
    assert st == 200 and d["status"] == "adapter_error" and d["deliveries"] == [], d
    # find: by tracking number, by id; nothing; too short
    tn = "1ZFIND0000000042"
    eid2 = h.post(tracking_number=tn)
    st, f = g.admin("GET", "/api/find?q=" + tn)
    assert st == 200 and f["data"] == [eid2], f
    # the id itself first, then the events that mention it (waybill's own
    # waybill.delivery.failed about its erp delivery)
    f = g.admin("GET", "/api/find?q=" + eid)[1]["data"]
    assert f[0] == eid and len(f) >= 2, f
    assert g.admin("GET", "/api/find?q=1ZNOTHERE999")[1]["data"] == []
    assert g.admin("GET", "/api/find?q=1Z")[0] == 400
    assert g.admin("GET", "/api/find")[0] == 400
    for path in ("/api/series", "/api/rules", "/api/batches", "/api/find?q=abc"):
        assert g.admin("GET", path, token=None)[0] == 401, path
    assert g.admin("POST", "/api/dryrun", {"event_id": eid}, token="wrong")[0] == 401
