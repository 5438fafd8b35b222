"""An invoiced period's usage is re-read with the subjects it was invoiced with (correctness, found from outside):
a subject that moves to another customer after its usage was invoiced takes none of it along. The billing run
re-checks an invoiced period for late usage until CORRECTION_WINDOW after it; it read the period with the
customer's subjects of now, found the moved subject's usage gone and credited it back (and the customer the
subject moved to was billed for usage of a period that was not its). Late usage of the moved subject inside the
invoiced period happened while the subject was the first customer's: it corrects that customer's invoice, once.
SUM and UNIQUE_COUNT meters (the latter read per party); on the in-memory twin and on chdb."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billow.adapters.sql_billing import marks
from billow.domain.billing import Mark
from billow.jsonx import dumps
from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run
from tests.support.catalog import published


def _card(key: str, amount: str) -> dict[str, Any]:
    return {"type": "usage_based", "key": key, "name": key.title(), "featureKey": key, "billingCadence": "P1M",
            "price": {"type": "unit", "amount": amount}}


def _customer(b: Billow, key: str, subjects: list[str], *, create: bool = True) -> dict[str, Any]:
    body = {"key": key, "name": key.title(), "currency": "USD", "usageAttribution": {"subjectKeys": subjects}}
    return b.ok("POST", "/api/v1/customers", body) if create else b.ok("PUT", f"/api/v1/customers/{key}", body)


def _world(b: Billow) -> None:
    """acme (subjects s_a1, s_a2) and globex (s_g) on one plan from April 1: tokens (SUM, 0.01 a token) and users
    (UNIQUE_COUNT, 1 USD a user)."""
    b.ok("POST", "/api/v1/meters", {"slug": "users", "eventType": "login", "aggregation": "UNIQUE_COUNT",
                                    "valueProperty": "$.user"})
    for key in ("users", "tokens"):
        b.ok("POST", "/api/v1/features", {"key": key, "name": key.title(), "meterSlug": key})
    _customer(b, "acme", ["s_a1", "s_a2"])
    _customer(b, "globex", ["s_g"])
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, {"key": "use", "name": "Use", "currency": "USD", "billingCadence": "P1M",
                  "phases": [{"key": "default", "name": "Default",
                              "rateCards": [_card("tokens", "0.01"), _card("users", "1")]}]})
    for key in ("acme", "globex"):
        b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "use"}, "customerKey": key,
                                               "timing": "2026-04-01T00:00:00Z"})


def _lines(inv: dict[str, Any]) -> dict[str, tuple[Decimal, Decimal]]:
    return {ln["featureKey"]: (Decimal(ln["quantity"]), Decimal(ln["totals"]["total"]))
            for ln in inv["lines"] if ln.get("featureKey") and Decimal(ln["totals"]["total"]) != 0}


def _by_customer(b: Billow) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"acme": [], "globex": []}
    for inv in sorted(invoices(b), key=lambda i: (i["createdAt"], i["number"])):
        out[inv["customer"]["key"]].append(inv)
    return out


def test_a_moved_subject_takes_no_invoiced_usage_along_and_its_late_usage_corrects_the_first_customer(
        billow: Billow) -> None:
    b = billow
    _world(b)
    b.send_events(("prompt", "s_a1", "2026-04-08T10:00:00Z", {"tokens": 600, "model": "gpt"}),
                  ("prompt", "s_a2", "2026-04-09T10:00:00Z", {"tokens": 900, "model": "gpt"}),
                  ("login", "s_a1", "2026-04-03T10:00:00Z", {"user": "alice"}),
                  ("login", "s_a2", "2026-04-05T10:00:00Z", {"user": "bob"}),
                  ("prompt", "s_g", "2026-04-10T10:00:00Z", {"tokens": 100, "model": "gpt"}),
                  ("login", "s_g", "2026-04-11T10:00:00Z", {"user": "gina"}))
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    first = _by_customer(b)
    assert [_lines(i) for i in first["acme"]] == [{"tokens": (Decimal(1500), Decimal("15.00")),
                                                    "users": (Decimal(2), Decimal("2.00"))}]
    assert [_lines(i) for i in first["globex"]] == [{"tokens": (Decimal(100), Decimal("1.00")),
                                                      "users": (Decimal(1), Decimal("1.00"))}]

    # s_a2 moves from acme to globex inside April's correction window: nothing is credited or billed.
    b.clock.set("2026-05-01T12:00:00Z")
    _customer(b, "acme", ["s_a1"], create=False)
    _customer(b, "globex", ["s_g", "s_a2"], create=False)
    b.clock.set("2026-05-01T13:00:00Z")
    scheduled_run(b)
    assert {k: len(v) for k, v in _by_customer(b).items()} == {"acme": 1, "globex": 1}

    # Late April usage of s_a2 (while it was acme's): acme's April invoice is corrected, globex is not billed.
    b.send_events(("prompt", "s_a2", "2026-04-20T10:00:00Z", {"tokens": 200, "model": "gpt"}),
                  ("login", "s_a2", "2026-04-21T10:00:00Z", {"user": "dave"}),
                  ("login", "s_a2", "2026-04-22T10:00:00Z", {"user": "alice"}))  # alice is acme's already: no new user
    b.clock.set("2026-05-02T00:10:00Z")
    scheduled_run(b)
    after = _by_customer(b)
    assert len(after["globex"]) == 1
    assert len(after["acme"]) == 2
    correction = after["acme"][1]
    assert _lines(correction) == {"tokens": (Decimal(200), Decimal("2.00")), "users": (Decimal(1), Decimal("1.00"))}
    tokens = next(ln for ln in correction["lines"] if ln.get("featureKey") == "tokens")
    assert sorted(tokens["lineage"]["subjects"]) == ["s_a1", "s_a2"]  # measured with the subjects April was billed with

    b.clock.set("2026-05-03T00:10:00Z")
    scheduled_run(b)  # exactly once
    assert {k: len(v) for k, v in _by_customer(b).items()} == {"acme": 2, "globex": 1}


def test_a_marks_subjects_are_stored_apart_from_its_billed_lines() -> None:
    """A mark's subjects ride in its stored JSON under a key no line key can be; read back, `billed` holds the line
    entries alone (every reader of `billed` sees lines only); a mark stored before has no subjects."""
    line = {"total": "15.00", "quantity": "1500", "amount": "15.00", "discounts": "0", "usage": "1500"}
    m = Mark("sub", datetime(2026, 4, 1, tzinfo=UTC), "in_arrears", 1, {"plan|tokens|tokens|regular": line},
             subjects=("s_a1", "s_a2"))
    assert Mark.parts(m.doc()) == (m.billed, ("s_a1", "s_a2"))
    assert Mark.parts(dict(m.billed)) == (m.billed, None)
    assert m.doc() is not m.billed and "@subjects" not in m.billed


def test_a_subject_read_for_two_parties_in_one_span_is_read_apart(billow: Billow) -> None:
    """globex's April mark records no subjects (written before marks did): it is re-checked with globex's subjects
    of now, s_a2 among them, while acme's invoiced April is read with s_a1 and s_a2 (and its April in-advance point,
    never billed, with s_a1 as acme): a subject is in two parties in the same spans (a non-additive meter's query puts
    each subject in one), so they are read in separate queries. acme gets no correction; globex, as before marks
    recorded subjects, is billed for what s_a2 adds to its April. (Read in one query, acme's users were credited
    or billed by whichever party s_a2 fell in.)"""
    b = billow
    _world(b)
    b.send_events(("prompt", "s_a1", "2026-04-08T10:00:00Z", {"tokens": 600, "model": "gpt"}),
                  ("prompt", "s_a2", "2026-04-09T10:00:00Z", {"tokens": 900, "model": "gpt"}),
                  ("login", "s_a1", "2026-04-03T10:00:00Z", {"user": "alice"}),
                  ("login", "s_a2", "2026-04-05T10:00:00Z", {"user": "bob"}),
                  ("login", "s_g", "2026-04-11T10:00:00Z", {"user": "gina"}))
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    store, ns = b.c.billing_store(), b.c.settings.namespace
    sub = None
    for (sub_id, _, term), m in store.marks_for(ns).items():
        if m.subjects == ("s_g",):
            sub = sub_id
            with store.engine.begin() as c:  # as a mark written before marks recorded subjects
                c.execute(marks.update().where(marks.c.namespace == ns, marks.c.subscription_id == sub_id,
                                               marks.c.term == term).values(doc=dumps(m.billed)))
    assert sub is not None and all(m.subjects is None for (s, _, _), m in store.marks_for(ns).items() if s == sub)
    b.clock.set("2026-05-01T12:00:00Z")
    _customer(b, "acme", ["s_a1"], create=False)
    _customer(b, "globex", ["s_g", "s_a2"], create=False)
    b.clock.set("2026-05-01T13:00:00Z")
    scheduled_run(b)
    after = _by_customer(b)
    assert len(after["acme"]) == 1
    assert [_lines(i) for i in after["globex"][1:]] == [{"tokens": (Decimal(900), Decimal("9.00")),
                                                         "users": (Decimal(1), Decimal("1.00"))}]
