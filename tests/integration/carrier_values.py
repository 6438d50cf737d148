"""The carriers' own published value sets, and what waybill makes of each.

Values come from the carriers' npm packages in tests/node_modules (installed
by `make test-deps` from tests/package.json) wherever a package publishes
them: ShipEngine's OpenAPI document (shipengine-openapi), AfterShip's SDK
(@aftership/tracking-sdk), EasyPost's SDK types (@easypost/api) and Shippo's
SDK (shippo). Where a carrier publishes a set only in its docs (EasyPost's
event names, AfterShip's subtags and webhook events, Shippo's substatus
codes, ShipEngine's tracking status codes, Shiptify's event types), the set
is written here with where it comes from.

Every value becomes one Case: the payload in the carrier's shape, and the
waybill type and shipment.status_detail it must give. test_carrier_values.py
runs every case through the real binary; tests/carrier_table.py writes the
README's mapping tables from the same cases. A value a package adds and no
mapping here covers fails the test (`unmapped`).
"""
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_MODULES = os.path.join(ROOT, "tests", "node_modules")

TRACKING_NUMBER = "9400111899223456789012"
AT = "2024-01-15T10:30:00Z"  # when every payload says its event happened
AT_UNIX = 1705314600
EARLIER = "2024-01-14T08:00:00Z"


class Case:
    """One published value: the source it goes to, the payload, and what
    waybill must make of it. shipment: None when the event is not about a
    parcel, else the fields (beyond status) the event must carry."""

    def __init__(self, carrier, field, value, body, type, status_detail=None, shipment=None,
                 created_at=None):
        self.carrier, self.field, self.value = carrier, field, value
        self.body, self.type, self.status_detail = body, type, status_detail
        self.shipment, self.created_at = shipment, created_at

    @property
    def name(self):
        return "%s %s=%s" % (self.carrier, self.field, self.value)


def _read(*parts):
    with open(os.path.join(NODE_MODULES, *parts), encoding="utf-8") as f:
        return f.read()


def _ts_block(text, start):
    """The lines of the TypeScript declaration starting at `start` up to its
    closing brace or semicolon."""
    i = text.index(start)
    end = min(j for j in (text.find("\n}", i), text.find(";\n", i)) if j >= 0)
    return text[i:end]


def ts_object_values(path, name):
    """`export const Name = { Key: "value", ... }` (Speakeasy's enums)."""
    return re.findall(r'^\s*\w+:\s*"([^"]+)"', _ts_block(_read(*path), "export const %s = {" % name), re.M)


def ts_enum_values(path, name):
    """`export enum Name { Key = "value", ... }`."""
    return re.findall(r'^\s*\w+\s*=\s*"([^"]+)"', _ts_block(_read(*path), "export enum %s {" % name), re.M)


def ts_union_values(path, name):
    """`export declare type Name = | 'a' | 'b';`."""
    return re.findall(r"\|\s*'([^']+)'", _ts_block(_read(*path), "type %s =" % name))


def openapi_enum(name):
    doc = json.loads(_read("shipengine-openapi", "openapi.json"))
    return doc["components"]["schemas"][name]["enum"]


# ---- AfterShip ----

AFTERSHIP_TAG = {
    "Pending": "tracking.unknown", "InfoReceived": "tracking.accepted",
    "InTransit": "tracking.in_transit", "OutForDelivery": "tracking.out_for_delivery",
    "AttemptFail": "tracking.failed_attempt", "Delivered": "tracking.delivered",
    "AvailableForPickup": "tracking.available_for_pickup", "Exception": "tracking.exception",
    "Expired": "tracking.exception",
}
# Subtags where the subtag says more than its tag.
AFTERSHIP_SUBTAG = {"Exception_010": "shipment.returned", "Exception_011": "shipment.returned"}
# AfterShip's "Delivery Sub-statuses" page (aftership.com/docs/tracking,
# enum/delivery-sub-statuses); the SDK names only a few of them in its docs.
AFTERSHIP_SUBTAGS_DOCS = (
    ["Pending_%03d" % i for i in range(1, 7)] + ["InfoReceived_001"]
    + ["InTransit_%03d" % i for i in range(1, 10)]
    + ["OutForDelivery_001", "OutForDelivery_003", "OutForDelivery_004", "OutForDelivery_007"]
    + ["AttemptFail_%03d" % i for i in range(1, 4)] + ["Delivered_%03d" % i for i in range(1, 5)]
    + ["AvailableForPickup_001"] + ["Exception_%03d" % i for i in range(1, 14)] + ["Expired_001"])
# The webhook's `event` field (AfterShip's webhook docs).
AFTERSHIP_EVENT = {"tracking_update": None, "edd_revise": "tracking.estimate_changed",
                   "tracking_pending_time": "aftership.tracking_pending_time"}


def aftership_subtags():
    """The documented subtags and every one the SDK's text mentions."""
    sdk = set()
    model = os.path.join(NODE_MODULES, "@aftership", "tracking-sdk", "src", "model")
    for name in os.listdir(model):
        with open(os.path.join(model, name), encoding="utf-8") as f:
            sdk.update(re.findall(r"\b((?:%s)_\d{3})\b" % "|".join(AFTERSHIP_TAG), f.read()))
    return sorted(set(AFTERSHIP_SUBTAGS_DOCS) | sdk, key=lambda s: (s.split("_")[0], s))


def _aftership_body(tag, subtag=None, event="tracking_update"):
    msg = {"id": "as_trk_1", "tracking_number": TRACKING_NUMBER, "slug": "usps", "tag": tag,
           "order_number": "ORD-1001", "updated_at": EARLIER,
           "latest_estimated_delivery": {"type": "specific", "datetime": "2024-01-17T00:00:00Z"},
           "checkpoints": [
               {"checkpoint_time": EARLIER, "city": "Dallas", "state": "TX", "tag": "InTransit"},
               {"checkpoint_time": AT, "city": "Austin", "state": "TX", "postal_code": "78701",
                "country_region": "USA", "tag": tag}]}
    if subtag:
        msg["subtag"] = subtag
    return {"event": event, "event_id": "as_evt_%s_%s" % (event, subtag or tag), "msg": msg,
            "ts": AT_UNIX}


AFTERSHIP_SHIPMENT = {"tracking_number": TRACKING_NUMBER, "carrier": "usps", "occurred_at": AT,
                      "reference": "ORD-1001", "estimated_delivery": "2024-01-17T00:00:00Z",
                      "location": {"city": "Austin", "state": "TX", "postal_code": "78701",
                                   "country": "USA"}}


def aftership_cases():
    tags = ts_enum_values(("@aftership", "tracking-sdk", "src", "model", "Tag.ts"), "Tag")
    for tag in tags:
        t = AFTERSHIP_TAG.get(tag)
        yield Case("aftership", "tag", tag, _aftership_body(tag), t, None, AFTERSHIP_SHIPMENT, AT)
    for sub in aftership_subtags():
        tag = sub.split("_")[0]
        t = AFTERSHIP_SUBTAG.get(sub) or AFTERSHIP_TAG.get(tag)
        yield Case("aftership", "subtag", sub, _aftership_body(tag, sub), t, sub,
                   AFTERSHIP_SHIPMENT, AT)
    for event, t in AFTERSHIP_EVENT.items():
        yield Case("aftership", "event", event, _aftership_body("InTransit", event=event),
                   t or AFTERSHIP_TAG["InTransit"], None, AFTERSHIP_SHIPMENT, AT)


# ---- EasyPost ----

EASYPOST_TRACKER = {
    "unknown": "tracking.unknown", "pre_transit": "tracking.accepted",
    "in_transit": "tracking.in_transit", "out_for_delivery": "tracking.out_for_delivery",
    "delivered": "tracking.delivered", "available_for_pickup": "tracking.available_for_pickup",
    "return_to_sender": "shipment.returned", "failure": "tracking.exception",
    "cancelled": "shipment.cancelled", "error": "tracking.exception",
}
EASYPOST_BATCH_STATE = {"purchased": "batch.completed", "label_generated": "batch.completed",
                        "creation_failed": "batch.failed", "purchase_failed": "batch.failed"}
# docs.easypost.com/docs/events ("Possible Event Types"); None: the
# catch-all easypost.<description>.
EASYPOST_EVENT = {
    "batch.created": None, "batch.updated": None,
    "claim.submitted": None, "claim.cancelled": None, "claim.updated": None,
    "claim.rejected": None, "claim.approved": None,
    "insurance.purchased": None, "insurance.cancelled": None,
    "payment.created": None, "payment.completed": None, "payment.failed": None,
    "refund.successful": "billing.adjustment",
    "report.new": None, "report.available": "report.completed", "report.empty": "report.completed",
    "report.failed": None,
    "scan_form.created": None, "scan_form.updated": None,
    "shipment.invoice.created": "billing.adjustment", "shipment.invoice.updated": "billing.adjustment",
    "tracker.created": "tracking.in_transit", "tracker.updated": "tracking.in_transit",
}


def _easypost_tracker(status, detail=None):
    r = {"id": "trk_1", "object": "Tracker", "tracking_code": TRACKING_NUMBER, "status": status,
         "carrier": "USPS", "est_delivery_date": "2024-01-17T00:00:00Z", "shipment_id": "shp_1",
         "tracking_details": [
             {"object": "TrackingDetail", "datetime": EARLIER, "status": "pre_transit",
              "tracking_location": {"city": "DALLAS", "state": "TX"}},
             {"object": "TrackingDetail", "datetime": AT, "status": status,
              "tracking_location": {"city": "AUSTIN", "state": "TX", "zip": "78701", "country": "US"}}]}
    if detail:
        r["status_detail"] = detail
    return r


def _easypost_body(description, result):
    return {"id": "evt_%s_%s" % (description, result.get("status") or result.get("state")),
            "object": "Event", "mode": "test", "description": description, "result": result,
            "created_at": AT, "updated_at": AT, "status": "pending"}


EASYPOST_SHIPMENT = {"tracking_number": TRACKING_NUMBER, "carrier": "usps", "occurred_at": AT,
                     "reference": "shp_1", "estimated_delivery": "2024-01-17T00:00:00Z",
                     "location": {"city": "AUSTIN", "state": "TX", "postal_code": "78701",
                                  "country": "US"}}


def _easypost_event_result(description):
    kind = description.split(".")[0]
    if kind == "tracker":
        return _easypost_tracker("in_transit")
    if kind == "batch":
        return {"id": "batch_1", "object": "Batch", "state": "created"}
    if kind == "refund":
        return {"id": "rfnd_1", "object": "Refund", "tracking_code": TRACKING_NUMBER,
                "carrier": "USPS", "status": "refunded", "shipment_id": "shp_1"}
    return {"id": kind + "_1", "object": kind}


def easypost_cases():
    types = ("@easypost", "api", "types")
    for status in ts_union_values(types + ("Tracker", "TrackerStatus.d.ts"), "ITrackerStatus"):
        yield Case("easypost", "tracker status", status,
                   _easypost_body("tracker.updated", _easypost_tracker(status)),
                   EASYPOST_TRACKER.get(status), None, EASYPOST_SHIPMENT, AT)
    for detail in ts_union_values(types + ("Tracker", "TrackerStatusDetail.d.ts"),
                                  "ITrackerStatusDetail"):
        yield Case("easypost", "tracker status_detail", detail,
                   _easypost_body("tracker.updated", _easypost_tracker("in_transit", detail)),
                   "tracking.in_transit", detail, EASYPOST_SHIPMENT, AT)
    for state in ts_union_values(types + ("Batch", "BatchState.d.ts"), "TBatchState"):
        body = _easypost_body("batch.updated", {"id": "batch_1", "object": "Batch", "state": state})
        yield Case("easypost", "batch.updated state", state, body,
                   EASYPOST_BATCH_STATE.get(state, "easypost.batch.updated"), None, None, AT)
    for desc, t in EASYPOST_EVENT.items():
        result = _easypost_event_result(desc)
        ship = None
        if "tracking_code" in result:
            ship = dict(EASYPOST_SHIPMENT) if desc.startswith("tracker.") else {
                "tracking_number": TRACKING_NUMBER, "carrier": "usps", "reference": "shp_1"}
        detail = "refunded" if desc == "refund.successful" else None
        yield Case("easypost", "event", desc, _easypost_body(desc, result),
                   t or "easypost." + desc, detail, ship, AT)


# ---- ShipEngine ----

# The tracking status codes: AC IT DE EX UN AT from ShipEngine's webhook
# docs (seeds/003), NY and SP from ShipStation API's tracking docs.
SHIPENGINE_STATUS = {
    "AC": "tracking.accepted", "IT": "tracking.in_transit", "DE": "tracking.delivered",
    "EX": "tracking.exception", "UN": "tracking.unknown", "AT": "tracking.failed_attempt",
    "NY": "tracking.unknown", "SP": "tracking.available_for_pickup",
}
# webhook_event (shipengine-openapi) -> the resource_type its payload carries.
SHIPENGINE_EVENT = {
    "batch": "batch.completed", "carrier_connected": "carrier.connected",
    "order_source_refresh_complete": "store.refreshed", "rate": "rate.updated",
    "report_complete": "report.completed", "sales_orders_imported": "order.imported",
    "track": "tracking.in_transit",
}
# ShipStation API v2 names (docs.shipstation.com, webhooks-schemas).
SHIPENGINE_V2 = {"TRACK_EVENT_V2": "tracking.in_transit", "BATCH_PROCESSED_V2": "batch.completed"}


def _shipengine_track(code, resource_type="API_TRACK"):
    return {"resource_url": "https://api.shipengine.com/v1/tracking?carrier_code=stamps_com"
                            "&tracking_number=" + TRACKING_NUMBER,
            "resource_type": resource_type,
            "data": {"tracking_number": TRACKING_NUMBER, "status_code": code, "label_id": "se-1001",
                     "status_description": "x", "carrier_status_code": "C-" + code,
                     "carrier_status_description": "x", "ship_date": EARLIER,
                     "estimated_delivery_date": "2024-01-17T00:00:00Z",
                     "actual_delivery_date": None, "exception_description": None,
                     "events": [
                         {"occurred_at": AT, "city_locality": "AUSTIN", "state_province": "TX",
                          "postal_code": "78701", "country_code": "US", "description": "x"},
                         {"occurred_at": EARLIER, "city_locality": "DALLAS",
                          "state_province": "TX", "postal_code": "75201", "country_code": "US"}]}}


SHIPENGINE_SHIPMENT = {"tracking_number": TRACKING_NUMBER, "carrier": "usps", "occurred_at": AT,
                       "reference": "se-1001",
                       "estimated_delivery": "2024-01-17T00:00:00Z",
                       "location": {"city": "AUSTIN", "state": "TX", "postal_code": "78701",
                                    "country": "US"}}


def shipengine_cases():
    for event in openapi_enum("webhook_event"):
        rtype = "API_" + event.upper()
        if event == "track":
            yield Case("shipengine", "webhook_event", event, _shipengine_track("IT", rtype),
                       SHIPENGINE_EVENT.get(event), "C-IT", SHIPENGINE_SHIPMENT, AT)
        else:
            body = {"resource_url": "https://api.shipengine.com/v1/x/se-1", "resource_type": rtype}
            yield Case("shipengine", "webhook_event", event, body, SHIPENGINE_EVENT.get(event))
    for code, t in SHIPENGINE_STATUS.items():
        yield Case("shipengine", "status_code", code, _shipengine_track(code), t, "C-" + code,
                   SHIPENGINE_SHIPMENT, AT)
    for rtype, t in SHIPENGINE_V2.items():
        if rtype.startswith("TRACK"):
            yield Case("shipengine", "resource_type", rtype, _shipengine_track("IT", rtype), t,
                       "C-IT", SHIPENGINE_SHIPMENT, AT)
        else:
            yield Case("shipengine", "resource_type", rtype,
                       {"resource_url": "https://api.shipstation.com/v2/batches/se-1",
                        "resource_type": rtype}, t)


# ---- Shippo ----

SHIPPO_STATUS = {"UNKNOWN": "tracking.unknown", "PRE_TRANSIT": "tracking.accepted",
                 "TRANSIT": "tracking.in_transit", "DELIVERED": "tracking.delivered",
                 "RETURNED": "shipment.returned", "FAILURE": "tracking.exception"}
SHIPPO_SUBSTATUS = {"out_for_delivery": "tracking.out_for_delivery",
                    "delivery_attempted": "tracking.failed_attempt",
                    "pickup_available": "tracking.available_for_pickup",
                    "return_to_sender": "shipment.returned"}
# Shippo's tracking "Event Definitions" (docs.goshippo.com/docs/tracking):
# each substatus code under the status it comes with.
SHIPPO_SUBSTATUS_DOCS = {
    "PRE_TRANSIT": ["information_received"],
    "TRANSIT": ["address_issue", "contact_carrier", "delayed", "delivery_attempted",
                "delivery_rescheduled", "delivery_scheduled", "location_inaccessible",
                "notice_left", "out_for_delivery", "package_accepted", "package_arrived",
                "package_damaged", "package_departed", "package_forwarded", "package_held",
                "package_processed", "package_processing", "pickup_available",
                "reschedule_delivery"],
    "DELIVERED": ["delivered"],
    "RETURNED": ["return_to_sender", "package_unclaimed"],
    "FAILURE": ["package_undeliverable", "package_disposed", "package_lost"],
    "UNKNOWN": ["other"],
}
SHIPPO_TRANSACTION = {"SUCCESS": "shipment.created", "REFUNDED": "shipment.cancelled"}
SHIPPO_EVENT = {"transaction_created": "shipment.created", "transaction_updated": "shipment.created",
                "track_updated": "tracking.in_transit", "batch_created": "shippo.batch_created",
                "batch_purchased": "batch.completed"}
# Values of the set that are never an event's name.
SHIPPO_NOT_EVENTS = {"all": "a webhook subscribed to every event"}


def _shippo_track(status, substatus=None):
    ts = {"object_id": "ts_%s_%s" % (status, substatus), "object_created": AT,
          "object_updated": AT, "status": status, "status_details": "x", "status_date": AT,
          "location": {"city": "Austin", "state": "TX", "zip": "78701", "country": "US"}}
    if substatus:
        ts["substatus"] = {"code": substatus, "text": "x", "action_required": False}
    return {"event": "track_updated", "test": True,
            "data": {"carrier": "usps", "tracking_number": TRACKING_NUMBER,
                     "eta": "2024-01-17T00:00:00Z", "metadata": "ORD-1001",
                     "tracking_status": ts, "tracking_history": [ts]}}


def _shippo_transaction(event, status):
    return {"event": event, "test": True,
            "data": {"object_id": "tx_1", "object_state": "VALID", "status": status,
                     "object_created": EARLIER, "object_updated": AT,
                     "tracking_number": TRACKING_NUMBER, "metadata": "ORD-1001",
                     "rate": {"object_id": "rate_1", "provider": "USPS"},
                     "eta": "2024-01-17T00:00:00Z"}}


SHIPPO_TRACK_SHIPMENT = {"tracking_number": TRACKING_NUMBER, "carrier": "usps", "occurred_at": AT,
                         "reference": "ORD-1001", "estimated_delivery": "2024-01-17T00:00:00Z",
                         "location": {"city": "Austin", "state": "TX", "postal_code": "78701",
                                      "country": "US"}}
SHIPPO_TX_SHIPMENT = {"tracking_number": TRACKING_NUMBER, "carrier": "usps",
                      "reference": "ORD-1001", "estimated_delivery": "2024-01-17T00:00:00Z"}


def shippo_cases():
    comp = ("shippo", "src", "models", "components")
    for event in ts_object_values(comp + ("webhookeventtypeenum.ts",), "WebhookEventTypeEnum"):
        if event in SHIPPO_NOT_EVENTS:
            continue
        if event == "track_updated":
            yield Case("shippo", "event", event, _shippo_track("TRANSIT"), SHIPPO_EVENT.get(event),
                       None, SHIPPO_TRACK_SHIPMENT, AT)
        elif event.startswith("transaction_"):
            yield Case("shippo", "event", event, _shippo_transaction(event, "SUCCESS"),
                       SHIPPO_EVENT.get(event), "SUCCESS", SHIPPO_TX_SHIPMENT, AT)
        else:
            yield Case("shippo", "event", event,
                       {"event": event, "test": True, "data": "batch b_1 " + event},
                       SHIPPO_EVENT.get(event))
    for status in ts_object_values(comp + ("trackingstatusenum.ts",), "TrackingStatusEnum"):
        yield Case("shippo", "tracking_status.status", status, _shippo_track(status),
                   SHIPPO_STATUS.get(status), None, SHIPPO_TRACK_SHIPMENT, AT)
    for status, subs in SHIPPO_SUBSTATUS_DOCS.items():
        for sub in subs:
            yield Case("shippo", "tracking_status.substatus", sub, _shippo_track(status, sub),
                       SHIPPO_SUBSTATUS.get(sub) or SHIPPO_STATUS[status], sub,
                       SHIPPO_TRACK_SHIPMENT, AT)
    for status in ts_object_values(comp + ("transactionstatusenum.ts",), "TransactionStatusEnum"):
        t = SHIPPO_TRANSACTION.get(status, "shippo.transaction_created")
        yield Case("shippo", "transaction status", status,
                   _shippo_transaction("transaction_created", status), t, status,
                   SHIPPO_TX_SHIPMENT, AT)


# ---- Shiptify ----

# Shiptify's documented event types: create_shipment (seeds/004) and the
# freight unit events of its webhook docs. A tracking update carries no
# status waybill can read.
SHIPTIFY_EVENT = {"create_shipment": "shipment.created",
                  "freight_unit_create_shipment": "shipment.created",
                  "freight_unit_cancel_shipment": "shipment.cancelled",
                  "freight_unit_update_tracking": "tracking.unknown"}


def shiptify_cases():
    for event, t in SHIPTIFY_EVENT.items():
        body = {"event_type": event, "timestamp": AT_UNIX * 1000, "token": "tok_" + event,
                "signature": "00", "shipment": {"id": 7, "tracking_number": TRACKING_NUMBER}}
        yield Case("shiptify", "event_type", event, body, t, None,
                   {"tracking_number": TRACKING_NUMBER, "reference": "7"}, AT)


CARRIERS = {"aftership": aftership_cases, "easypost": easypost_cases,
            "shipengine": shipengine_cases, "shippo": shippo_cases, "shiptify": shiptify_cases}


def cases():
    """Every case of every carrier, in a fixed order."""
    out = []
    for fn in CARRIERS.values():
        out.extend(fn())
    return out
