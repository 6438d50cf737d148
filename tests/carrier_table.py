#!/usr/bin/env python3
"""carrier_table.py -- writes the README's per-carrier mapping tables
(carrier value -> waybill type -> shipment.status_detail) from the cases
tests/integration/test_carrier_values.py checks against the real binary,
so the README and the adapters cannot drift apart.

    python3 tests/carrier_table.py           # rewrite README.md's section
    python3 tests/carrier_table.py --check   # exit 1 when it is stale

Needs tests/node_modules (make test-deps): the value sets come from the
carriers' packages.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "integration"))
import carrier_values  # noqa: E402

README = os.path.join(os.path.dirname(HERE), "README.md")
MARKERS = ("<!-- carrier-tables: written by tests/carrier_table.py -->",
           "<!-- /carrier-tables -->")

TITLES = {"aftership": "AfterShip", "easypost": "EasyPost", "shipengine": "ShipEngine",
          "shippo": "Shippo", "shiptify": "Shiptify"}


def _detail(case):
    if case.status_detail is not None:
        return "`%s`" % case.status_detail
    if case.shipment is None:
        return "(no shipment)"
    return "—"


def render(cases):
    """The section's text (between the markers) for cases."""
    out = []
    by = {}
    for c in cases:
        by.setdefault(c.carrier, []).append(c)
    for carrier, rows in by.items():
        out.append("")
        out.append("**%s** (`carrier = \"%s\"`)" % (TITLES.get(carrier, carrier), carrier))
        out.append("")
        out.append("| carrier value | waybill type | `shipment.status_detail` |")
        out.append("|---|---|---|")
        for c in rows:
            t = c.type
            if t.startswith(carrier + "."):
                t = "`<source>.%s` (catch-all)" % t[len(carrier) + 1:]
            else:
                t = "`%s`" % t
            out.append("| %s `%s` | %s | %s |" % (c.field, c.value, t, _detail(c)))
    out.append("")
    return "\n".join(out)


def section(text):
    """The text between the markers in text, or None."""
    a, b = text.find(MARKERS[0]), text.find(MARKERS[1])
    if a < 0 or b < a:
        return None
    return text[a + len(MARKERS[0]):b]


def main():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    have = section(text)
    if have is None:
        sys.exit("README.md has no %s ... %s section" % MARKERS)
    want = render(carrier_values.cases())
    if "--check" in sys.argv[1:]:
        if have != want:
            sys.exit("README.md's carrier tables are stale: run python3 tests/carrier_table.py")
        return
    a = text.index(MARKERS[0]) + len(MARKERS[0])
    with open(README, "w", encoding="utf-8") as f:
        f.write(text[:a] + want + text[text.index(MARKERS[1]):])


if __name__ == "__main__":
    main()
