"""Every value of every carrier's published value set (carrier_values.py:
read from the carriers' own npm packages, or from their docs where no
package has the set) goes through the real binary's adapter and rules
(`waybill route`): its type, its shipment fields and created_at are what
the mapping says, rules see ev.shipment, and the README's mapping tables
are the ones tests/carrier_table.py writes from the same cases.
"""
import concurrent.futures
import json
import os
import subprocess
import sys

import carrier_values
import wb

sys.path.insert(0, os.path.join(wb.ROOT, "tests"))
import carrier_table  # noqa: E402

# Every source by carrier =, not by its signature scheme.
CONFIG = '''
source "aftership"  { verify = "none", insecure = true, carrier = "aftership" }
source "easypost"   { verify = "none", insecure = true, carrier = "easypost" }
source "shipengine" { verify = "none", insecure = true, carrier = "shipengine" }
source "shippo"     { verify = "none", insecure = true, carrier = "shippo" }
source "shiptify"   { verify = "none", insecure = true, carrier = "shiptify" }
endpoint "erp" { url = "http://127.0.0.1:9/erp", sign = "none" }
rules "rules/"
'''
# A rule reading ev.shipment: what it sends is what a rule saw.
RULE = '''
on("*", function(ev)
  send("erp", { type = ev.type, shipment = ev.shipment or "none", created_at = ev.created_at })
end)
'''


def route_all(cases):
    """{case name: (exit status, parsed output or stderr)} for every case,
    each through `waybill route` (a few at once)."""
    d = wb._mkdtemp("wb-values-")
    os.makedirs(os.path.join(d, "rules"))
    with open(os.path.join(d, "waybill.lua"), "w") as f:
        f.write(CONFIG)
    with open(os.path.join(d, "rules", "10.lua"), "w") as f:
        f.write(RULE)

    def one(i_case):
        i, case = i_case
        path = os.path.join(d, "event-%d.json" % i)
        with open(path, "w") as f:
            json.dump(case.body, f)
        p = subprocess.run([wb._bin(), "route", "-c", os.path.join(d, "waybill.lua"),
                            "--source", case.carrier, path],
                           capture_output=True, text=True, timeout=30)
        return case.name, (p.returncode, json.loads(p.stdout) if p.returncode == 0 else p.stderr)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, enumerate(cases)))


def expected_shipment(case):
    if case.shipment is None:
        return None
    want = {k: v for k, v in case.shipment.items()}
    want["status"] = case.type.rsplit(".", 1)[-1]
    if case.status_detail is not None:
        want["status_detail"] = case.status_detail
    return want


def test_every_published_value_maps_to_a_type_and_the_shipment_fields():
    cases = carrier_values.cases()
    unmapped = [c.name for c in cases if not c.type]
    assert not unmapped, "values the carriers publish that no mapping covers: %s" % unmapped
    assert len({c.name for c in cases}) == len(cases)
    got = route_all(cases)
    wrong = []
    for c in cases:
        rc, out = got[c.name]
        if rc != 0:
            wrong.append((c.name, "exit %d: %s" % (rc, out.strip())))
            continue
        ev = out["event"]
        want = {"type": c.type, "created_at": c.created_at, "shipment": expected_shipment(c)}
        have = {"type": ev["type"], "created_at": ev.get("created_at"), "shipment": ev.get("shipment")}
        if have != want:
            wrong.append((c.name, {"want": want, "got": have}))
            continue
        # what the rule saw is what the event holds
        sent = out["deliveries"][0]["payload"]
        seen = {"type": sent["type"], "created_at": sent.get("created_at"),
                "shipment": None if sent["shipment"] == "none" else sent["shipment"]}
        if seen != want:
            wrong.append((c.name, {"rule saw": seen, "want": want}))
    assert not wrong, "%d of %d values:\n%s" % (
        len(wrong), len(cases), "\n".join("  %s: %s" % w for w in wrong[:20]))


def test_every_parcel_event_has_tracking_number_carrier_and_created_at():
    for c in carrier_values.cases():
        if c.type.startswith(("tracking.", "shipment.")):
            assert c.shipment and c.shipment.get("tracking_number"), c.name
            assert c.created_at, c.name
            if c.carrier != "shiptify":  # Shiptify documents no carrier field
                assert c.shipment.get("carrier"), c.name


def test_readme_mapping_tables_are_the_ones_the_cases_give():
    with open(os.path.join(wb.ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    want = carrier_table.render(carrier_values.cases())
    have = carrier_table.section(readme)
    assert have is not None, "README.md has no %s ... %s section" % carrier_table.MARKERS
    assert have == want, "README's mapping tables are stale: run python3 tests/carrier_table.py"


def readme_rules():
    """The first Lua block of the README's Rules section."""
    with open(os.path.join(wb.ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    rules = text[text.index("\n## Rules\n"):]
    return rules[rules.index("```lua\n") + 7:rules.index("\n```", rules.index("```lua\n"))]


def test_readme_and_example_rules_work_for_every_carrier():
    """The README's rule example and examples/rules/ read ev.shipment: a
    delivery from each carrier gives the ERP and CRM the same record, and
    a USPS tracking update reaches the warehouse batch, whatever the
    carrier's own field names."""
    delivered = [c for c in carrier_values.cases() if c.type == "tracking.delivered"
                 and c.field in ("tag", "tracker status", "status_code", "tracking_status.status")]
    assert sorted({c.carrier for c in delivered}) == ["aftership", "easypost", "shipengine", "shippo"]
    endpoints = "".join('endpoint "%s" { url = "http://127.0.0.1:9/%s", sign = "none" }\n' % (e, e)
                        for e in ("erp", "crm", "bi", "alerts", "warehouse"))
    for name, files in (("readme", {"10.lua": readme_rules()}),
                        ("examples", {f: open(os.path.join(wb.ROOT, "examples", "rules", f)).read()
                                      for f in os.listdir(os.path.join(wb.ROOT, "examples", "rules"))})):
        d = wb._mkdtemp("wb-rules-")
        os.makedirs(os.path.join(d, "rules"))
        for f, text in files.items():
            with open(os.path.join(d, "rules", f), "w") as fh:
                fh.write(text)
        with open(os.path.join(d, "waybill.lua"), "w") as fh:
            fh.write(CONFIG.replace('endpoint "erp" { url = "http://127.0.0.1:9/erp", sign = "none" }\n',
                                    endpoints))
        for c in delivered:
            path = os.path.join(d, "ev.json")
            with open(path, "w") as fh:
                json.dump(c.body, fh)
            p = subprocess.run([wb._bin(), "route", "-c", os.path.join(d, "waybill.lua"),
                                "--source", c.carrier, path], capture_output=True, text=True)
            assert p.returncode == 0, (name, c.name, p.stderr)
            sent = {}
            for dl in json.loads(p.stdout)["deliveries"]:
                sent.setdefault(dl["endpoint"], []).append(dl["payload"])
            crm = (sent.get("crm") or [{}])[0]
            assert crm.get("tracking") == carrier_values.TRACKING_NUMBER, (name, c.name, sent)
            assert crm.get("order") == c.shipment["reference"], (name, c.name, sent)
            assert crm.get("at") == carrier_values.AT, (name, c.name, sent)
            records = [x for x in sent.get("crm", []) + sent.get("erp", []) if "carrier" in x]
            assert records and records[0]["carrier"] == c.shipment["carrier"], (name, c.name, sent)
            if name == "readme":  # the README's tracking.* rule: USPS parcels to the warehouse
                assert sent.get("warehouse"), (name, c.name, sent)


def test_a_shippo_event_through_the_gateway_keeps_its_shipment_in_store_admin_and_replay():
    """verify = "shippo" picks the Shippo adapter: a signed track_updated
    with an out_for_delivery substatus is typed by it, its shipment is in
    the admin API's event view and in what the endpoint gets, a retry of the
    same body is a duplicate (the adapter's id), and a replay (routed from
    the store) sends the same shipment again."""
    sink = wb.Sink()
    g = wb.Gateway(wb.config('''
        source "shippo" { verify = "shippo", secret = "sh-secret" }
        endpoint "erp" { url = %s, sign = "none" }
        rules "rules/"
    ''' % wb.lua(sink.url)), files={"rules/10.lua": 'on("*", {"erp"})'})
    case = next(c for c in carrier_values.cases()
                if c.carrier == "shippo" and c.value == "out_for_delivery")
    body = wb.compact(case.body)
    r = g.post("/hooks/shippo", body, wb.signed_headers("shippo", "sh-secret", body))
    assert r.status == 200, r
    eid = r.json()["id"]
    want = expected_shipment(case)
    ev = g.wait_event(eid, lambda e: e["status"] == "routed")
    assert ev["type"] == "tracking.out_for_delivery" and ev["shipment"] == want, ev
    assert ev["created_at"] == carrier_values.AT and ev["source_id"], ev
    got = sink.wait_for_count(1)[0].json()
    assert got["shipment"] == want and got["data"] == case.body["data"], got
    r = g.post("/hooks/shippo", body, wb.signed_headers("shippo", "sh-secret", body))
    assert r.status == 200 and r.json() == {"id": eid, "duplicate": True}, r
    st, _ = g.admin("POST", "/api/events/%s/replay" % eid)
    assert st == 200, st
    again = sink.wait_for_count(2)[1].json()
    assert again["shipment"] == want and again["id"] == eid, again
