"""The tools an operator reaches for (issue 19, second part): log formats,
systemd readiness, the install layout, the OpenAPI document, tail and listen."""

import json
import os
import re
import shlex
import socket
import subprocess
import time

import wb

SOURCE_SECRET = "src-Secret-7fQ2"
ENDPOINT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HEADER_SECRET = "Bearer hdr-Secret-91xZ"
ADMIN_TOKEN = "adm-Secret-3kLp"


def _gateway(sink, log_format=None, extra="", env=None):
    settings = {"log_format": log_format} if log_format else {}
    return wb.Gateway(wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SOURCE_SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ENDPOINT_SECRET)},
                          headers = {{ Authorization = {wb.lua(HEADER_SECRET)} }},
                          retry = {{ "0s", "200ms" }}, jitter = false }}
        rules "rules/"
        {extra}
    ''', token=ADMIN_TOKEN, **settings), files={"rules/10-main.lua": 'on("*", {"erp"})'}, env=env)


def _traffic(g, sink):
    """One accepted event delivered on its second attempt, a bad signature,
    an unknown path, a wrong admin token and a good admin call. Returns the
    event id."""
    body = wb.atoship_event()
    r = g.post_atoship(body, SOURCE_SECRET)
    assert r.status == 200, r
    event_id = r.json()["id"]
    assert g.post_atoship(wb.atoship_event(), "not-the-secret").status == 401
    assert g.post("/hooks/nowhere", b"{}").status == 404
    assert g.admin("GET", "/api/status", token="wrong-token")[0] == 401
    sink.wait_for_count(2, timeout=10)
    g.wait_event(event_id, lambda e: e["deliveries"][0]["status"] == "delivered")
    assert g.admin("GET", "/api/events/" + event_id)[0] == 200
    return event_id


def _lines(g):
    return [x for x in g.log().splitlines() if x and not x.startswith("--- wb:")]


def _logfmt(line):
    """A logfmt line into a dict (values bare or double-quoted with \\ escapes)."""
    out, i = {}, 0
    pat = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
    while i < len(line):
        m = pat.match(line, i)
        assert m, "not logfmt at %d: %r" % (i, line)
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r'\\(.)', lambda x: {"n": "\n"}.get(x.group(1), x.group(1)), v[1:-1])
        out[m.group(1)] = v
        i = m.end()
    return out


def _check_lines(records, event_id):
    """What every format must carry: one request line per request, one
    attempt line per attempt, with their ids."""
    reqs = [r for r in records if r.get("msg") == "request"]
    ok = [r for r in reqs if r.get("listener") == "inbound" and str(r.get("status")) == "200"]
    assert len(ok) == 1 and ok[0]["event"] == event_id and ok[0]["source"] == "atoship", reqs
    assert ok[0]["path"] == "/hooks/atoship" and ok[0]["method"] == "POST", ok
    assert any(r.get("listener") == "inbound" and str(r["status"]) == "401" for r in reqs), reqs
    assert any(r.get("listener") == "inbound" and str(r["status"]) == "404"
               and r["path"] == "/hooks/nowhere" for r in reqs), reqs
    assert any(r.get("listener") == "admin" and str(r["status"]) == "401"
               and r["path"] == "/api/status" for r in reqs), reqs
    assert any(r.get("listener") == "admin" and str(r["status"]) == "200"
               and r["path"] == "/api/events/" + event_id for r in reqs), reqs
    attempts = [r for r in records if r.get("msg") == "attempt"]
    assert [str(a["attempt"]) for a in attempts] == ["1", "2"], attempts
    assert [str(a["status"]) for a in attempts] == ["500", "200"], attempts
    assert [a["outcome"] for a in attempts] == ["pending", "delivered"], attempts
    for a in attempts:
        assert a["event"] == event_id and a["endpoint"] == "erp", a
        assert a["delivery"].startswith("dlv_") and int(a["ms"]) >= 0, a
    assert attempts[0]["delivery"] == attempts[1]["delivery"]
    assert attempts[0]["retry_in"], attempts[0]


def test_log_format_json_lines():
    sink = wb.Sink([500, 200])
    g = _gateway(sink, "json")
    event_id = _traffic(g, sink)
    records = []
    for line in _lines(g):
        rec = json.loads(line)  # every line is one JSON object
        assert isinstance(rec, dict) and {"time", "level", "msg"} <= set(rec), line
        assert rec["level"] in ("debug", "info", "warn", "error"), line
        records.append(rec)
    _check_lines(records, event_id)
    attempts = [r for r in records if r["msg"] == "attempt"]
    assert attempts[0]["status"] == 500 and attempts[0]["attempt"] == 1  # numbers, not strings
    assert any("serving" in r["msg"] for r in records), records[:5]


def test_log_format_logfmt():
    sink = wb.Sink([500, 200])
    g = _gateway(sink, "logfmt")
    event_id = _traffic(g, sink)
    records = []
    for line in _lines(g):
        rec = _logfmt(line)
        assert {"time", "level", "msg"} <= set(rec) and list(rec)[:3] == ["time", "level", "msg"], line
        records.append(rec)
    _check_lines(records, event_id)
    assert any(r["msg"].startswith("waybill ") and "serving" in r["msg"] for r in records)


def test_log_format_text_is_the_default_and_carries_the_same_fields():
    sink = wb.Sink([500, 200])
    g = _gateway(sink)
    event_id = _traffic(g, sink)
    records = []
    for line in _lines(g):
        m = re.match(r"^(\S+) (DEBUG|INFO|WARN|ERROR) +(\S+)(.*)$", line)
        assert m, line
        rec = {"msg": m.group(3)}
        if m.group(3) in ("request", "attempt"):
            rec.update(_logfmt(m.group(4)))
        records.append(rec)
    _check_lines(records, event_id)


def test_log_format_unknown_is_refused_with_its_line():
    g = wb.Gateway(wb.config('log_format = "xml"'), start=False)
    r = g.cli("check")
    err = r.stderr.decode()
    assert r.returncode != 0 and "log_format" in err and '"logfmt"' in err and "xml" in err, err
    assert re.search(r"waybill\.lua:\d+", err), err


def test_a_reload_switches_the_log_format():
    sink = wb.Sink()
    g = _gateway(sink)
    text = open(g.config_path).read()
    g.write("waybill.lua", text.replace("\nrules ", '\nlog_format = "json"\nrules ', 1))
    assert g.admin("POST", "/api/reload")[0] == 200
    assert g.admin("GET", "/api/status")[0] == 200
    last = g.wait_for(lambda: [x for x in _lines(g) if "/api/status" in x], message="status line")
    assert json.loads(last[-1])["path"] == "/api/status", last


def test_no_configured_secret_is_ever_logged():
    # Every kind of secret the config holds, at debug level, through every
    # path that logs: accepted and refused webhooks, wrong and right admin
    # tokens, deliveries that fail and succeed, a reload, and a start that
    # fails on a store URL with a password.
    for fmt in (None, "json"):  # None: the default, text
        sink = wb.Sink([500, 200])
        g = _gateway(sink, fmt, env={"WAYBILL_LOG": "debug"})
        _traffic(g, sink)
        assert g.admin("POST", "/api/reload")[0] == 200
        assert g.admin("GET", "/api/endpoints")[0] == 200
        g.stop()
        log = g.log()
        assert "attempt" in log and "request" in log, log[-2000:]
        for secret in (SOURCE_SECRET, ENDPOINT_SECRET, ENDPOINT_SECRET[6:], HEADER_SECRET,
                       HEADER_SECRET[7:], ADMIN_TOKEN):
            assert secret not in log, "%s in the %s log:\n%s" % (secret, fmt, log)
    g = wb.Gateway(wb.config("", store="postgres://waybill:pg-Secret-55@localhost/waybill"),
                   start=False)
    g.start(wait=False)
    assert g.proc.wait(timeout=wb.START_TIMEOUT) != 0
    log = g.log()
    assert "unsupported url" in log and "pg-Secret-55" not in log, log
    assert "postgres://waybill:***@localhost/waybill" in log, log
