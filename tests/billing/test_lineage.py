"""Lineage of invoice lines (issue 21 item 1): every usage-priced line records how it was measured and a digest of
the usage behind it; its events can be listed (pages, CSV) and re-aggregate exactly to its quantity; `verify` says
whether the usage changed since and which correction line billed what arrived later."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billow.domain.lineage import key_hash
from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
from tests.billing.conftest import Billow
from tests.support.billing import invoices, scheduled_run, subscribed


def usage_line(inv: dict[str, Any]) -> dict[str, Any]:
    return next(ln for ln in inv["lines"] if ln.get("featureKey") == "tokens")


def all_events(b: Billow, inv: dict[str, Any], line: dict[str, Any], limit: int = 2) -> list[dict[str, Any]]:
    out, cursor, pages_ = [], None, 0
    while True:
        q = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}/lines/{line['id']}/events", query=q)
        out += page["items"]
        pages_ += 1
        assert len(page["items"]) <= limit
        cursor = page.get("nextCursor")
        if cursor is None:
            return out
        assert pages_ < 100


def test_usage_lines_record_lineage_and_their_events_reaggregate_exactly(billow: Billow) -> None:
    b = billow
    sub = subscribed(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    for tokens, at in [("600.25", "2026-04-05T10:00:00Z"), (900, "2026-04-28T10:00:00Z"), ("0.1", "2026-04-30T23:59:59.999Z"),
                       (7, "2026-04-10T00:00:00Z")]:
        b.usage(tokens, at)
    b.usage(3, "2026-04-11T00:00:00Z", subject="someone_else")  # not the customer's
    b.usage(50, "2026-05-01T00:00:00Z")  # May's usage: not behind April's line
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    second = invoices(b)[1]
    line = usage_line(second)
    lin = line["lineage"]
    assert lin["meter"]["slug"] == "tokens" and lin["featureKey"] == "tokens" and lin["subjects"] == ["customer_1"]
    assert lin["period"] == {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}
    assert lin["queryTime"] == "2026-05-01T00:10:00Z" and lin["since"] is None
    assert line["quantity"] == "1507.35" and line["subscription"]["id"] == sub["id"]
    events = all_events(b, second, line)
    assert len(events) == 4
    assert sum(Decimal(e["value"]) for e in events) == Decimal(line["quantity"])  # exactly
    assert lin["digest"] == {"events": 4, "sum": "1507.35",
                             "hash": "sha256:" + key_hash([(e["source"], e["id"]) for e in events])}
    assert [(e["source"], e["id"]) for e in events] == sorted((e["source"], e["id"]) for e in events)
    # CSV: the same events.
    out = api(apigw_event("GET", f"/api/v1/billing/invoices/{second['id']}/lines/{line['id']}/events", {"accept": "text/csv"},
                          b"", "127.0.0.1"), None)
    assert out["statusCode"] == 200 and out["headers"]["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(out["body"])))
    assert [(r["id"], r["value"]) for r in rows] == [(e["id"], e["value"]) for e in events]
    # Nothing arrived since: verify says unchanged.
    v = b.ok("POST", f"/api/v1/billing/invoices/{second['id']}/lines/{line['id']}/verify")
    assert v["unchanged"] is True and v["arrivedLater"] == [] and v["current"] == lin["digest"]
    # A detailed line's id stands for its parent's lineage.
    child = line["children"][0]["id"]
    assert b.ok("POST", f"/api/v1/billing/invoices/{second['id']}/lines/{child}/verify")["lineId"] == line["id"]
    # Flat lines have no lineage; unknown lines are 404; a bad cursor or limit is a 400 naming it.
    base = next(ln for ln in second["lines"] if ln.get("featureKey") != "tokens")
    assert "lineage" not in base
    for path in (f"/api/v1/billing/invoices/{second['id']}/lines/{base['id']}/events",
                 f"/api/v1/billing/invoices/{second['id']}/lines/nope/events", "/api/v1/billing/invoices/nope/lines/x/events"):
        status, body = b.call("GET", path)
        assert status == 404, (path, body)
    for q, name in (({"cursor": "%%%"}, "cursor"), ({"limit": "0"}, "limit")):
        status, body = b.call("GET", f"/api/v1/billing/invoices/{second['id']}/lines/{line['id']}/events", query=q)
        assert status == 400 and name in json.dumps(body), body


def test_a_late_event_is_reported_by_verify_with_the_correction_that_billed_it(billow: Billow) -> None:
    b = billow
    subscribed(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    b.usage(1500, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    second = invoices(b)[1]
    line = usage_line(second)
    # A late event for April arrives after the line was invoiced.
    b.clock.set("2026-05-01T12:00:00Z")
    b.usage(100, "2026-04-29T09:00:00Z")
    v = b.ok("POST", f"/api/v1/billing/invoices/{second['id']}/lines/{line['id']}/verify")
    assert v["unchanged"] is False
    assert (v["invoiced"]["events"], v["current"]["events"], v["current"]["sum"]) == (1, 2, "1600")
    (late,) = v["arrivedLater"]
    assert (late["value"], late["time"], late["ingestedAt"], late["billedBy"]) == (
        "100", "2026-04-29T09:00:00Z", "2026-05-01T12:00:00Z", None)  # not billed yet
    # The next run bills it as a correction; verify now names that line.
    b.clock.set("2026-05-02T00:00:00Z")
    scheduled_run(b)
    third = invoices(b)[2]
    corr = usage_line(third)
    assert corr["lineage"]["since"] == "2026-05-01T00:10:00Z" and corr["quantity"] == "100"
    assert corr["lineage"]["digest"]["events"] == 2
    (late,) = b.ok("POST", f"/api/v1/billing/invoices/{second['id']}/lines/{line['id']}/verify")["arrivedLater"]
    assert late["billedBy"]["invoiceId"] == third["id"] and late["billedBy"]["lineId"] == corr["id"]
    # The correction line's events are the late one only: they re-aggregate to its quantity.
    (ev,) = all_events(b, third, corr)
    assert Decimal(ev["value"]) == Decimal(corr["quantity"])
    # The original line still lists what it invoiced.
    assert [e["value"] for e in all_events(b, second, line)] == ["1500"]
    assert b.ok("POST", f"/api/v1/billing/invoices/{third['id']}/lines/{corr['id']}/verify")["unchanged"] is True


def test_a_one_off_usage_line_records_lineage_and_can_be_verified(billow: Billow) -> None:
    """A pending (one-off) usage line is rated by the billing run that takes it: it records the same lineage as a
    subscription's usage line, its events re-aggregate to its quantity, and verify sees usage that came later."""
    b = billow
    subscribed(b)
    customer = b.ok("GET", "/api/v1/customers/acme")
    b.ok("POST", f"/api/v1/billing/customers/{customer['id']}/invoices/pending-lines", {"currency": "USD", "lines": [
        {"name": "Extra tokens", "featureKey": "tokens", "invoiceAt": "2026-04-01T00:05:00Z",
         "period": {"from": "2026-03-30T00:00:00Z", "to": "2026-03-31T00:00:00Z"}, "price": {"type": "unit", "amount": "0.02"}},
        {"name": "Onboarding", "invoiceAt": "2026-04-01T00:05:00Z",
         "period": {"from": "2026-03-30T00:00:00Z", "to": "2026-03-31T00:00:00Z"}, "price": {"type": "flat", "amount": "150"}}]})
    for tokens, at in [("200.5", "2026-03-30T00:00:00Z"), (49, "2026-03-30T23:59:59.999Z")]:
        b.usage(tokens, at)
    b.usage(1000, "2026-03-31T00:00:00Z")  # after the line's period
    b.usage(7, "2026-03-30T12:00:00Z", subject="someone_else")  # not the customer's
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    inv = next(i for i in invoices(b) if i["status"] != "gathering")
    line = next(ln for ln in inv["lines"] if ln["name"] == "Extra tokens")
    assert line["quantity"] == "249.5" and line["totals"]["total"] == "4.99"
    lin = line["lineage"]
    assert (lin["meter"]["slug"], lin["featureKey"], lin["subjects"], lin["since"]) == ("tokens", "tokens", ["customer_1"], None)
    assert lin["period"] == {"from": "2026-03-30T00:00:00Z", "to": "2026-03-31T00:00:00Z"}
    assert lin["queryTime"] == "2026-04-01T00:10:00Z"
    events = all_events(b, inv, line)
    assert sorted(e["value"] for e in events) == ["200.5", "49"]
    assert lin["digest"] == {"events": 2, "sum": "249.5", "hash": "sha256:" + key_hash([(e["source"], e["id"]) for e in events])}
    assert "lineage" not in next(ln for ln in inv["lines"] if ln["name"] == "Onboarding")  # a flat one-off line
    assert b.ok("POST", f"/api/v1/billing/invoices/{inv['id']}/lines/{line['id']}/verify")["unchanged"] is True
    b.clock.set("2026-04-01T12:00:00Z")
    b.usage(3, "2026-03-30T08:00:00Z")  # late usage inside the line's period
    v = b.ok("POST", f"/api/v1/billing/invoices/{inv['id']}/lines/{line['id']}/verify")
    assert v["unchanged"] is False and v["current"]["sum"] == "252.5"
    assert [(e["value"], e["ingestedAt"], e["billedBy"]) for e in v["arrivedLater"]] == [("3", "2026-04-01T12:00:00Z", None)]


def test_the_key_hash_is_the_documented_one_and_the_usage_stores(billow: Billow) -> None:
    """The digest's key hash (billow.domain.lineage.key_hash, sped up for receipts: issue 21's budget) is still SHA-256
    over `source NUL id LF` in the UTF-8 byte order of the keys, as written down before, and equal to the one the
    usage store computes (chdb's arraySort, the in-memory twin), for keys beyond ASCII, keys that prefix one another
    and more keys than one hashing slice; an order or framing that differed anywhere would change the hash."""
    import hashlib

    def documented(keys: list[tuple[str, str]]) -> str:  # the definition, as key_hash computed it before
        h = hashlib.sha256()
        for s, i in sorted(keys, key=lambda k: (k[0].encode(), k[1].encode())):
            h.update(f"{s}\0{i}\n".encode())
        return h.hexdigest()

    b = billow
    b.clock.set("2026-04-30T12:00:00Z")
    sources = ["a", "ab", "a b", "é", "e\uffff", "\uffff", "\U0001f600", "Z", "~"]
    ids = ["1", "10", "2", "ß", "日本", "\u00e9", "e\u0301", "x" * 40, "~"]
    keys = [(s, f"{i}-{n}") for n in range(120) for s in sources for i in ids]  # 9,720 keys: more than one slice
    assert len(set(keys)) == len(keys) > 8192
    for lo in range(0, len(keys), 5000):
        batch = [{"specversion": "1.0", "id": i, "source": s, "type": "prompt", "subject": "customer_1",
                  "time": "2026-04-02T10:00:00Z", "data": {"tokens": 1, "model": "m"}} for s, i in keys[lo:lo + 5000]]
        status, out = b.call("POST", "/api/v1/events", batch, content_type="application/cloudevents-batch+json")
        assert status == 204, out
    assert key_hash(keys) == key_hash(list(reversed(keys))) == documented(keys)
    assert key_hash(keys[:3]) == documented(keys[:3]) and key_hash([]) == documented([]) == hashlib.sha256(b"").hexdigest()
    meter = b.c.meta.get_meter(b.c.namespace, "tokens")
    got = b.c.usage.line_digests(b.c.namespace, meter.id, datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC),
                                 [], {"customer_1": "line"})["line"]
    assert (got.events, got.sum, got.hash) == (len(keys), Decimal(len(keys)), documented(keys))
