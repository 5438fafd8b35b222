"""Billing use-cases: billing profiles and customer overrides, the billing run, invoice actions and payment
status from the apps (sandbox, custom invoicing, Stripe).

The billing run (scheduled; also `POST /api/v1/billing/invoices/invoice` for one customer now):
1. for every subscription, the billing points that are due: a period's in-advance fees when it starts, its
   in-arrears fees and usage when it ends (or when the subscription ends inside it);
2. each point is rated (billow.domain.subscriptions.charges, usage from the usage store in one query per
   meter and span for all subscriptions sharing it) and compared, line key by line key, with what its billing
   mark says was billed: the difference is billed. A first run bills everything; a re-run bills nothing; usage
   that arrived late, or a plan change that shortened an in-advance period, shows up as a correction line on
   the next invoice (a period's points are re-checked until `CORRECTION_WINDOW` after the period ends);
3. per customer, the lines become one invoice (plus one-off pending lines that are due), prepaid credit is
   applied, and invoice and marks are written in one transaction (see adapters/sql_billing.py: overlapping
   runs cannot bill a period twice);
4. the invoice then follows its billing profile's workflow: with auto-advance and no draft period it is
   issued at once through the invoicing app, then handed to the payment app; drafts whose draft period ended
   are issued; issued invoices past their due date become overdue.
"""

from __future__ import annotations

import decimal
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from billow import jsonx
from billow.domain import catalog as catalog_rules
from billow.domain import invoices as inv_rules
from billow.domain import pricing
from billow.domain import subscriptions as subs
from billow.domain.money import Currency
from billow.domain.periods import RecurringPeriod
from billow.domain.usage import UsageQuery, final_value
from billow.errors import Conflict, NotFound, ValidationFailed
from billow.exact import EXACT, parse_decimal
from billow.ids import new_id
from billow.ports import MetaStore, UsageStore
from billow.services.balances import feature_filters
from billow.services.entitlements import EntitlementStore, minute
from billow.timeutil import format_rfc3339, parse_rfc3339

if TYPE_CHECKING:
    from billow.domain.payments import PaymentEvent

log = logging.getLogger("billow.billing")

CORRECTION_WINDOW = timedelta(days=7)
APP_TYPES = ("sandbox", "custom_invoicing", "stripe")
WORKFLOW_DEFAULTS: dict[str, Any] = {
    "collection": {"alignment": {"type": "subscription"}, "interval": "PT1H"},
    "invoicing": {"autoAdvance": True, "draftPeriod": "P0D", "dueAfter": "P30D", "progressiveBilling": False},
    "payment": {"collectionMethod": "charge_automatically"},
    "tax": {"enabled": False, "enforced": False},
}
_TERMS = ("in_advance", "in_arrears")


bad = ValidationFailed.at


# -- profiles ------------------------------------------------------------------------------------------------
def _duration(value: Any, field_name: str, *, zero_ok: bool) -> str:
    if zero_ok and value in ("P0D", "PT0S", "PT0H"):
        return str(value)
    problems: catalog_rules.Problems = []
    out = catalog_rules.duration(value, field_name, problems, minimum=timedelta(0))
    if problems or out is None:
        raise catalog_rules.failure(problems)
    return out


def _workflow(body: Any, base: dict[str, Any]) -> dict[str, Any]:
    if body is None:
        return base
    if not isinstance(body, dict):
        raise bad("workflow", "must be an object")
    out = {k: dict(v) for k, v in base.items()}
    for section, values in body.items():
        if section not in out or not isinstance(values, dict):
            raise bad(f"workflow.{section}", "unknown workflow section" if section not in out else "must be an object")
        out[section].update(values)
    inv = out["invoicing"]
    for flag in ("autoAdvance", "progressiveBilling"):
        if not isinstance(inv.get(flag), bool):
            raise bad(f"workflow.invoicing.{flag}", "must be a boolean")
    inv["draftPeriod"] = _duration(inv.get("draftPeriod"), "workflow.invoicing.draftPeriod", zero_ok=True)
    inv["dueAfter"] = _duration(inv.get("dueAfter"), "workflow.invoicing.dueAfter", zero_ok=True)
    if out["payment"].get("collectionMethod") not in ("charge_automatically", "send_invoice"):
        raise bad("workflow.payment.collectionMethod", "must be charge_automatically or send_invoice")
    alignment = out["collection"].get("alignment") or {}
    if alignment.get("type") not in ("subscription", "anchored"):
        raise bad("workflow.collection.alignment.type", "must be subscription or anchored")
    return out


def _apps(body: Any) -> dict[str, str]:
    if not isinstance(body, dict):
        raise bad("apps", "must be {tax, invoicing, payment} with app types sandbox, custom_invoicing or stripe")
    out = {}
    for role in ("tax", "invoicing", "payment"):
        app = body.get(role, "sandbox")
        if isinstance(app, dict):
            app = app.get("type") or app.get("id")
        if app not in APP_TYPES:
            raise bad(f"apps.{role}", f"must be one of {', '.join(APP_TYPES)}")
        out[role] = app
    return out


def _supplier(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"].strip():
        raise bad("supplier.name", "the supplier's name is required (it is printed on every invoice)")
    if body.get("addresses") is not None and not isinstance(body["addresses"], list):
        raise bad("supplier.addresses", "must be a list of addresses")
    return dict(body)


def create_profile(namespace: str, body: Any, *, store: Any, now: datetime) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("body", "must be a billing profile")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "is required")
    stamp = format_rfc3339(now)
    doc = {"id": new_id(), "name": name, "description": body.get("description"), "metadata": body.get("metadata"),
           "supplier": _supplier(body.get("supplier")), "workflow": _workflow(body.get("workflow"), WORKFLOW_DEFAULTS),
           "apps": _apps(body.get("apps", {})), "default": bool(body.get("default")), "createdAt": stamp,
           "updatedAt": stamp, "deletedAt": None}
    if not store.list_profiles(namespace):
        doc["default"] = True  # the first profile is the default one
    store.put_profile(namespace, doc)
    return doc


def get_profile(namespace: str, id_: str, *, store: Any) -> dict[str, Any]:
    doc = store.get_profile(namespace, id_)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"billing profile {id_!r} not found")
    return dict(doc)


def update_profile(namespace: str, id_: str, body: Any, *, store: Any, now: datetime) -> dict[str, Any]:
    doc = get_profile(namespace, id_, store=store)
    if not isinstance(body, dict):
        raise bad("body", "must be a billing profile")
    if body.get("name") is not None:
        doc["name"] = body["name"]
    if body.get("supplier") is not None:
        doc["supplier"] = _supplier(body["supplier"])
    if body.get("workflow") is not None:
        doc["workflow"] = _workflow(body["workflow"], doc["workflow"])
    if body.get("apps") is not None:
        doc["apps"] = _apps(body["apps"])
    if body.get("default") is True:
        doc["default"] = True
    doc["updatedAt"] = format_rfc3339(now)
    store.put_profile(namespace, doc)
    return doc


def delete_profile(namespace: str, id_: str, *, store: Any, now: datetime) -> None:
    doc = get_profile(namespace, id_, store=store)
    if doc.get("default"):
        raise Conflict("the default billing profile cannot be deleted; make another one the default first")
    doc["deletedAt"] = format_rfc3339(now)
    store.put_profile(namespace, doc)


def put_override(namespace: str, customer_id: str, body: Any, *, store: Any, meta: MetaStore, now: datetime) -> dict[str, Any]:
    customer = resolve_customer(namespace, customer_id, meta)
    if not isinstance(body, dict):
        raise bad("body", "must be {billingProfileId?, workflow?}")
    if body.get("billingProfileId") is not None:
        get_profile(namespace, str(body["billingProfileId"]), store=store)
    if body.get("workflow") is not None:
        _workflow(body["workflow"], WORKFLOW_DEFAULTS)
    stamp = format_rfc3339(now)
    doc = {"customerId": customer["id"], "billingProfileId": body.get("billingProfileId"),
           "workflow": body.get("workflow"), "createdAt": stamp, "updatedAt": stamp}
    store.put_override(namespace, customer["id"], doc)
    return doc


def get_override(namespace: str, customer_id: str, *, store: Any, meta: MetaStore) -> dict[str, Any]:
    """OpenMeter's BillingProfileCustomerOverride, with the profile that applies after it."""
    customer = resolve_customer(namespace, customer_id, meta)
    return {"customerId": customer["id"], **(store.get_override(namespace, customer["id"]) or {}),
            "billingProfile": resolved_profile(namespace, customer["id"], store=store)}


def delete_override(namespace: str, customer_id: str, *, store: Any, meta: MetaStore) -> None:
    store.put_override(namespace, resolve_customer(namespace, customer_id, meta)["id"], None)


def resolved_profile(namespace: str, customer_id: str, *, store: Any) -> dict[str, Any] | None:
    """The customer's override applied to its profile (the override's, else the default one)."""
    override = store.get_override(namespace, customer_id)
    return _Context(store.list_profiles(namespace), {customer_id: override} if override else {}, {}).profile(customer_id)


def resolve_customer(namespace: str, id_or_key: str, meta: MetaStore) -> dict[str, Any]:
    found = meta.get_customer(namespace, id_or_key)
    if found is None:
        raise NotFound(f"customer {id_or_key!r} not found")
    return found


# -- usage, batched ------------------------------------------------------------------------------------------
class BatchedUsage:
    """Usage for many subscriptions at once: requests are collected first (a rating pass with zero usage), then
    answered with one usage-store query per (feature, span) grouped by subject."""

    def __init__(self, namespace: str, *, meta: MetaStore, ents: EntitlementStore, usage: UsageStore) -> None:
        self.ns, self.meta, self.ents, self.usage = namespace, meta, ents, usage
        self.wanted: dict[tuple[str, datetime, datetime], set[str]] = defaultdict(set)
        self.values: dict[tuple[str, datetime, datetime], dict[str, Decimal]] = {}
        self.errors: dict[tuple[str, datetime, datetime], Exception] = {}  # raised again to each reader that asks

    def want(self, subjects: list[str], spans: list[tuple[str, datetime, datetime]]) -> None:
        for feature, s, e in spans:
            self.wanted[(feature, minute(s), minute(e))].update(subjects)

    def fetch(self) -> None:
        for (feature_key, s, e), subjects in self.wanted.items():
            if (feature_key, s, e) in self.values or e <= s or not subjects:
                self.values.setdefault((feature_key, s, e), {})
                continue
            try:  # a feature that cannot be rated fails only the subscriptions that read it
                self.values[(feature_key, s, e)] = self._query(feature_key, s, e, subjects)
            except Exception as exc:
                self.errors[(feature_key, s, e)] = exc

    def _query(self, feature_key: str, s: datetime, e: datetime, subjects: set[str]) -> dict[str, Decimal]:
        feature = self.ents.get_feature(self.ns, feature_key, include_archived=True)
        meter = self.meta.get_meter(self.ns, feature["meterSlug"]) if feature and feature.get("meterSlug") else None
        if feature is None or meter is None:
            raise NotFound(f"feature {feature_key!r} has no meter to rate")
        rows = self.usage.aggregate(UsageQuery(
            namespace=self.ns, meter_id=meter.id, aggregation=meter.aggregation, start=s,
            end=e - timedelta(milliseconds=1), window_size=None, window_tz="UTC", subjects=sorted(subjects),
            group_by=[], by_subject=True, subject_customers=None, filters=feature_filters(feature)))
        return {r.subject or "": final_value(meter.aggregation, r) or Decimal(0) for r in rows}

    def reader(self, subjects: list[str]) -> subs.UsageFn:
        def read(feature: str, s: datetime, e: datetime) -> Decimal:
            if (error := self.errors.get((feature, minute(s), minute(e)))) is not None:
                raise error
            got = self.values.get((feature, minute(s), minute(e)), {})
            with decimal.localcontext(EXACT):
                return sum((got.get(x, Decimal(0)) for x in subjects), Decimal(0))
        return read


# -- the billing run -------------------------------------------------------------------------------------------
@dataclass
class Point:
    sub: dict[str, Any]
    period: tuple[datetime, datetime]
    term: str
    mark: Any  # adapters.sql_billing.Mark (rev 0 when new)


@dataclass
class RunResult:
    invoices: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    subscriptions: int = 0
    points: int = 0
    advanced: int = 0
    documents: int = 0
    # Customers this run could not bill (customerId, subscriptionId, invoiceId, reason): left out of this run
    # (nothing of theirs is written, so the next run tries them again) while every other customer is billed.
    failures: list[dict[str, str | None]] = field(default_factory=list)
    errors: dict[str, Exception] = field(default_factory=dict, repr=False)  # customer id -> first error

    def fail(self, customer_id: str, exc: Exception, *, subscription_id: str | None = None,
             invoice_id: str | None = None) -> None:
        log.error("billing run: customer %s failed (subscription %s, invoice %s): %s: %s; the other customers are "
                  "billed, this one is tried again on the next run", customer_id, subscription_id, invoice_id,
                  type(exc).__name__, exc, exc_info=exc)
        self.errors.setdefault(customer_id, exc)
        self.failures.append({"customerId": customer_id, "subscriptionId": subscription_id, "invoiceId": invoice_id,
                              "reason": f"{type(exc).__name__}: {exc}"})

    def to_json(self) -> dict[str, Any]:
        return {"invoices": [i["id"] for i in self.invoices], "skipped": self.skipped, "subscriptions": self.subscriptions,
                "points": self.points, "advanced": self.advanced, "documents": self.documents,
                "failures": self.failures}


def _due_points(sub: dict[str, Any], as_of: datetime, marks: dict[Any, Any], now: datetime) -> list[Point]:
    from billow.adapters.sql_billing import Mark

    start, end = subs.t(sub["activeFrom"]), subs.t(sub.get("activeTo"))
    assert start is not None
    if start > as_of or (end is not None and end <= start):
        return []
    grid = subs.cycle(sub)
    out = []
    ps = grid.containing(start)[0]
    while ps <= as_of and (end is None or ps < end):
        pe = grid.next_after(ps)
        for term, due_at in (("in_advance", max(ps, start)), ("in_arrears", min(pe, end) if end else pe)):
            if due_at > as_of:
                continue
            mark = marks.get((sub["id"], ps, term))
            if mark is not None and pe + CORRECTION_WINDOW < now:
                continue  # closed: corrections end CORRECTION_WINDOW after the period
            out.append(Point(sub, (ps, pe), term, mark or Mark(sub["id"], ps, term, 0, {})))
        ps = pe
    return out


def _key(c: subs.Charge) -> str:
    return f"{c.item.source}|{c.item.rate_card['key']}|{c.line.key}|{c.line.category}"


def _diff(point: Point, charges: list[subs.Charge], now: datetime) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """Invoice lines for what this point owes beyond what it was billed, and the new billed state."""
    billed: dict[str, dict[str, str]] = dict(point.mark.billed)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    current: dict[str, subs.Charge] = {}
    for c in charges:
        if c.line.payment_term != point.term:
            continue
        k = _key(c)
        current[k] = c
    with decimal.localcontext(EXACT):
        keys = sorted(set(current) | set(billed))
        for k in keys:
            was = billed.get(k, {"total": "0", "quantity": "0", "amount": "0", "discounts": "0"})
            ch = current.get(k)
            if ch is None:  # billed before, gone now (e.g. the period was shortened): credited back in full
                total = qty = amount = disc = Decimal(0)
            else:
                total, qty = ch.line.total, ch.line.quantity
                amount, disc = ch.line.amount_rounded, ch.line.discounts_total
            d_total = total - Decimal(was["total"])
            d_qty = qty - Decimal(was["quantity"])
            if d_total == 0 and d_qty == 0:
                continue
            billed[k] = {"total": format(total, "f"), "quantity": plain(qty), "amount": format(amount, "f"),
                         "discounts": format(disc, "f")}
            if d_total == 0:
                continue  # a quantity that costs nothing more (e.g. inside a free allowance) is recorded, not invoiced
            correction = point.mark.rev > 0 and k in point.mark.billed
            source, card_key, line_key, category = k.split("|")
            item = ch.item if ch else None
            rc = item.rate_card if item else {"key": card_key, "name": card_key, "type": "usage_based"}
            group = groups.setdefault((source, card_key), _parent(point, rc, item, now))
            d_amount = amount - Decimal(was.get("amount", was["total"]))
            d_disc = disc - Decimal(was.get("discounts", "0"))
            group["children"].append({
                "id": new_id(), "name": f"{ch.line.description if ch else rc['name'] + ': ' + line_key}"
                                        f"{' (correction)' if correction else ''}",
                "type": "flat_fee", "managedBy": "subscription", "status": "valid", "category": category,
                "quantity": plain(d_qty), "perUnitAmount": plain(ch.line.unit_price) if ch else "0",
                "paymentTerm": point.term,
                "period": _period(ch.line.period_start, ch.line.period_end) if ch else group["period"],
                "invoiceAt": format_rfc3339(now), "currency": point.sub["currency"],
                "totals": inv_rules.totals(d_amount, d_disc)})
    lines = []
    for group in groups.values():
        group["totals"] = inv_rules.sum_totals(group["children"])
        with decimal.localcontext(EXACT):
            group["quantity"] = plain(sum((Decimal(child["quantity"]) for child in group["children"]
                                            if child["category"] == "regular"), Decimal(0)))
        lines.append(group)
    return lines, billed


def plain(value: Decimal) -> str:
    """A quantity without trailing zeros (usage stores keep 18 decimals): 1500, 0.25, never 1.5E+3."""
    return "0" if value == 0 else format(value.normalize(), "f")


def _period(s: datetime, e: datetime) -> dict[str, str]:
    return {"from": format_rfc3339(s), "to": format_rfc3339(e)}


def _parent(point: Point, rc: dict[str, Any], item: subs.Item | None, now: datetime) -> dict[str, Any]:
    sub = point.sub
    s, e = point.period
    if item is not None:
        s, e = max(s, item.start), min(e, item.end) if item.end else e
    return {"id": new_id(), "name": rc["name"], "type": rc["type"], "managedBy": "subscription", "status": "valid",
            "featureKey": rc.get("featureKey"), "price": rc.get("price"), "currency": sub["currency"],
            "period": _period(s, e), "invoiceAt": format_rfc3339(now), "createdAt": format_rfc3339(now),
            "updatedAt": format_rfc3339(now),
            "subscription": {"id": sub["id"], "phase": {"id": f"{sub['id']}-{item.source.split(':', 1)[1]}" if item else ""},
                             "item": {"id": f"{sub['id']}-{rc['key']}"}},
            "children": []}


def run(namespace: str, *, store: Any, catalog_store: Any, meta: MetaStore, ents: EntitlementStore, usage: UsageStore,
        now: datetime, customer_id: str | None = None, as_of: datetime | None = None,
        on_issue: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> RunResult:
    """One billing run (see the module docstring). Idempotent: run it again and nothing changes.

    A customer whose subscription, pending line, invoice or commit raises is left out of the run and recorded in
    `RunResult.failures` (and logged); every other customer is billed. Run for one customer (`customer_id`), its
    error is raised after the run."""
    as_of = min(as_of or now, now)
    result = RunResult()
    docs = [d for d in catalog_store.list_subscriptions(namespace, customer_id) if not d.get("deletedAt")]
    result.subscriptions = len(docs)
    marks = store.marks_for(namespace, [d["id"] for d in docs] if customer_id else None)
    customers = {c["id"]: c for c in meta.list_customers(namespace)}
    batch = BatchedUsage(namespace, meta=meta, ents=ents, usage=usage)
    subjects_of: dict[str, list[str]] = {}
    points_by_sub: list[tuple[dict[str, Any], list[Point]]] = []
    for d in docs:
        try:
            points = _due_points(d, as_of, marks, now)
            cust = customers.get(d["customerId"]) or meta.get_customer(namespace, d["customerId"]) or {}
            subjects_of[d["id"]] = list((cust.get("usageAttribution") or {}).get("subjectKeys") or [])
            for ps in {p.period for p in points}:
                batch.want(subjects_of[d["id"]], subs.usage_spans(d, ps[0], ps[1]))
        except Exception as exc:
            result.fail(d["customerId"], exc, subscription_id=d["id"])
            continue
        points_by_sub.append((d, points))
    batch.fetch()
    # One invoice per customer and currency (a customer may pay in more than one).
    per_customer: dict[tuple[str, str], list[tuple[list[dict[str, Any]], Any]]] = defaultdict(list)
    for d, points in points_by_sub:
        result.points += len(points)
        rated: dict[tuple[datetime, datetime], list[subs.Charge]] = {}
        owed: list[tuple[list[dict[str, Any]], Any]] = []
        try:
            for p in points:
                if p.period not in rated:
                    rated[p.period] = subs.charges(d, p.period[0], p.period[1], usage=batch.reader(subjects_of[d["id"]]))
                lines, billed = _diff(p, rated[p.period], now)
                if billed != p.mark.billed:
                    owed.append((lines, replace(p.mark, billed=billed)))
        except Exception as exc:
            result.fail(d["customerId"], exc, subscription_id=d["id"])
            continue
        per_customer[(d["customerId"], d["currency"])] += owed
    gathering: dict[tuple[str, str], list[tuple[dict[str, Any], str]]] = defaultdict(list)
    for g in store.list_invoices(namespace, customer_ids=[customer_id] if customer_id else None, statuses=["gathering"]):
        due_now = [ln for ln in g["lines"] if parse_rfc3339(ln["invoiceAt"], "invoiceAt") <= as_of]
        if not due_now or g["customer"]["id"] in result.errors:
            continue
        cust = customers.get(g["customer"]["id"]) or {}
        subjects = list((cust.get("usageAttribution") or {}).get("subjectKeys") or [])
        try:
            rated_lines = [_rate_pending(namespace, ln, g["currency"], subjects, meta=meta, ents=ents, usage=usage,
                                         now=now) for ln in due_now]
        except Exception as exc:
            result.fail(g["customer"]["id"], exc, invoice_id=g["id"])
            continue
        per_customer[(g["customer"]["id"], g["currency"])].append((rated_lines, None))
        before = jsonx.dumps(g)
        gathering[(g["customer"]["id"], g["currency"])].append(({**g, "lines": [ln for ln in g["lines"] if ln not in due_now],
                                                "updatedAt": format_rfc3339(now)}, before))
    ctx = _Context(store.list_profiles(namespace), store.list_overrides(namespace), store.invoice_counts(namespace),
                   store.credit_balances(namespace))
    prepared = []
    for key, parts in per_customer.items():
        if key[0] in result.errors:
            continue  # all of a failed customer waits for the next run (one invoice, never a part of it)
        try:
            prep = _prepare(namespace, key[0], parts, customers, ctx, store=store, now=now, result=result,
                            gathering=gathering.get(key, []))
        except Exception as exc:
            result.fail(key[0], exc)
            continue
        if prep is not None:
            prepared.append(prep)
    for start in range(0, len(prepared), COMMIT_BATCH):
        for item in _commit(namespace, prepared[start:start + COMMIT_BATCH], store=store, now=now, result=result):
            if item.invoice is None:
                continue
            inv = item.invoice
            try:
                if on_issue is not None and inv["statusDetails"]["extendedStatus"] == "draft.ready_to_issue":
                    inv = on_issue(inv)
                elif on_issue is not None and inv["status"] != "draft":
                    on_issue(inv)  # issued in the batch (sandbox): the apps still hear of it
            except Exception as exc:  # the invoice is written; its issuing failed for this customer only
                result.fail(item.customer["id"], exc, invoice_id=inv["id"])
            result.invoices.append(inv)
    result.advanced += _advance_due(namespace, store=store, now=now, on_issue=on_issue, customer_id=customer_id,
                                    result=result)
    if customer_id is not None and customer_id in result.errors:
        raise result.errors[customer_id]
    return result


COMMIT_BATCH = 200  # invoices per transaction: a durable commit costs milliseconds, a batch of them one commit


@dataclass
class _Context:
    """What every customer of a run needs, read once: profiles, overrides, invoice counts (for numbers)."""

    profiles: list[dict[str, Any]]
    overrides: dict[str, dict[str, Any]]
    counts: dict[str, int]
    credits: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # (customer, currency) -> balance

    def profile(self, customer_id: str) -> dict[str, Any] | None:
        override = self.overrides.get(customer_id) or {}
        found = next((p for p in self.profiles if p["id"] == override.get("billingProfileId")), None) or \
            next((p for p in self.profiles if p.get("default")), None)
        if found is not None and override.get("workflow"):
            found = {**found, "workflow": _workflow(override["workflow"], found["workflow"])}
        return found


@dataclass
class _Prepared:
    customer: dict[str, Any]
    invoice: dict[str, Any] | None
    marks: list[Any]
    credit: tuple[str, Decimal] | None
    gathering: list[tuple[dict[str, Any], str]]  # pending-line holders without the lines taken (new doc, old JSON)


def _prepare(namespace: str, customer_id: str, parts: list[tuple[list[dict[str, Any]], Any]],
             customers: dict[str, dict[str, Any]], ctx: _Context, *, store: Any, now: datetime,
             result: RunResult, gathering: list[tuple[dict[str, Any], str]]) -> _Prepared | None:
    customer = customers.get(customer_id)
    profile = ctx.profile(customer_id)
    if customer is None or profile is None:
        reason = "customer deleted" if customer is None else "no billing profile: create one (POST /api/v1/billing/profiles)"
        result.skipped.append({"customerId": customer_id, "reason": reason})
        return None
    lines = [ln for ls, _ in parts for ln in ls]
    invoice, credit = None, None
    if lines:
        ctx.counts[customer_id] = ctx.counts.get(customer_id, 0) + 1
        invoice = new_invoice(namespace, customer, profile, lines[0]["currency"], lines, number=ctx.counts[customer_id],
                              now=now)
        balance = ctx.credits.get((customer_id, invoice["currency"]), Decimal(0))
        due = inv_rules.due(invoice)
        if balance > 0 and due > 0:
            credit = (new_id(), min(balance, due))
            invoice["totals"] = inv_rules.sum_totals(invoice["lines"], credit[1])
        if invoice["statusDetails"]["extendedStatus"] == "draft.ready_to_issue" \
                and invoice["workflow"]["apps"]["invoicing"] == "sandbox":
            _issue_state(invoice, now)  # nothing leaves Billow: issued in the same transaction as its lines
    return _Prepared(customer, invoice, [m for _, m in parts if m is not None], credit, gathering)


def _commit(namespace: str, batch: list[_Prepared], *, store: Any, now: datetime, result: RunResult) -> list[_Prepared]:
    """Commit a batch in one transaction; if a concurrent run got there first for any of it, commit one by one so
    that only the customers it billed are skipped (their invoice is the other run's)."""
    try:
        store.commit_billing(namespace, [(p.invoice, p.marks, p.credit, p.gathering) for p in batch], now)
        return batch
    except Conflict:
        if len(batch) == 1:
            result.skipped.append({"customerId": batch[0].customer["id"],
                                   "reason": "billed by a concurrent run meanwhile; its invoice stands"})
            return []
    except Exception as exc:  # rolled back: find the customer it was by committing one by one
        if len(batch) == 1:
            result.fail(batch[0].customer["id"], exc, invoice_id=(batch[0].invoice or {}).get("id"))
            return []
    done = []
    for p in batch:
        done += _commit(namespace, [p], store=store, now=now, result=result)
    return done


def _number(customer: dict[str, Any], n: int) -> str:
    prefix = "".join(ch for ch in str(customer.get("key") or customer["id"]).upper() if ch.isalnum())[:12] or "INV"
    return f"{prefix}-{n:04d}"


def new_invoice(namespace: str, customer: dict[str, Any], profile: dict[str, Any], currency: str,
                lines: list[dict[str, Any]], *, number: int, now: datetime) -> dict[str, Any]:
    Currency.of(currency)
    stamp = format_rfc3339(now)
    periods = [ln["period"] for ln in lines]
    wf = profile["workflow"]
    invoice: dict[str, Any] = {
        "id": new_id(), "number": _number(customer, number), "type": "standard", "currency": currency,
        "description": None, "metadata": None, "createdAt": stamp, "updatedAt": stamp, "deletedAt": None,
        "supplier": profile["supplier"],
        "customer": {"id": customer["id"], "key": customer.get("key"), "name": customer.get("name"),
                     "primaryEmail": customer.get("primaryEmail"), "billingAddress": customer.get("billingAddress"),
                     "usageAttribution": customer.get("usageAttribution")},
        "period": {"from": min(p["from"] for p in periods), "to": max(p["to"] for p in periods)},
        "lines": lines, "totals": inv_rules.sum_totals(lines),
        "workflow": {"sourceBillingProfileId": profile["id"], "apps": profile["apps"], "workflow": wf},
        "externalIds": {}, "validationIssues": [], "issuedAt": None, "dueAt": None, "draftUntil": None,
    }
    invoicing = wf["invoicing"]
    if not invoicing["autoAdvance"]:
        inv_rules.set_status(invoice, "draft.manual_approval_needed")
    elif invoicing["draftPeriod"] in ("P0D", "PT0S", "PT0H"):
        inv_rules.set_status(invoice, "draft.ready_to_issue")
    else:
        invoice["draftUntil"] = format_rfc3339(RecurringPeriod(invoicing["draftPeriod"], now).at(1))
        inv_rules.set_status(invoice, "draft.waiting_auto_approval")
    return invoice


def _advance_due(namespace: str, *, store: Any, now: datetime, on_issue: Callable[[dict[str, Any]], dict[str, Any]] | None,
                 customer_id: str | None, result: RunResult) -> int:
    """Drafts whose draft period ended are issued; issued invoices past due become overdue (one invoice failing
    is recorded and leaves the others to advance)."""
    n = 0
    for inv in store.list_invoices(namespace, customer_ids=[customer_id] if customer_id else None,
                                   statuses=["draft", "issued", "payment_processing"]):
        try:
            n += _advance_one(namespace, inv, store=store, now=now, on_issue=on_issue)
        except Conflict:
            continue  # a concurrent run moved it first
        except Exception as exc:
            result.fail(inv["customer"]["id"], exc, invoice_id=inv["id"])
    return n


def _advance_one(namespace: str, inv: dict[str, Any], *, store: Any, now: datetime,
                 on_issue: Callable[[dict[str, Any]], dict[str, Any]] | None) -> int:
    ext = inv["statusDetails"]["extendedStatus"]
    if ext == "draft.waiting_auto_approval" and inv.get("draftUntil") and parse_rfc3339(inv["draftUntil"], "draftUntil") <= now:
        if on_issue is not None:
            on_issue(inv)
            return 1
    elif inv["status"] in ("issued", "payment_processing") and inv.get("dueAt") \
            and parse_rfc3339(inv["dueAt"], "dueAt") <= now:
        before = inv["status"]
        inv_rules.set_status(inv, "overdue")
        inv["updatedAt"] = format_rfc3339(now)
        store.put_invoice(namespace, inv, expect_status=before)
        return 1
    return 0


# -- one-off lines ---------------------------------------------------------------------------------------------
def add_pending_lines(namespace: str, customer_id: str, body: Any, *, store: Any, meta: MetaStore, ents: EntitlementStore,
                      now: datetime) -> dict[str, Any]:
    """One-off lines for a customer (OpenMeter's InvoicePendingLineCreateInput): a flat price (a one-off charge)
    or a usage price on a feature (its meter's usage over the line's period). They wait on the customer's
    gathering invoice for that currency and go onto the first invoice made at or after their `invoiceAt`."""
    customer = resolve_customer(namespace, customer_id, meta)
    if not isinstance(body, dict):
        raise bad("body", "must be {currency, lines}")
    currency = Currency.of(body.get("currency")).code
    if customer.get("currency") and customer["currency"] != currency:
        raise bad("currency", f"customer {customer.get('key') or customer['id']} is billed in {customer['currency']}, "
                              f"not {currency}")
    raw = body.get("lines")
    if not isinstance(raw, list) or not raw:
        raise bad("lines", "must be a non-empty list")
    lines = [_pending_line(ln, f"lines[{i}]", namespace, ents, now) for i, ln in enumerate(raw)]
    for ln in lines:
        ln["currency"] = currency
    holder = next((g for g in store.list_invoices(namespace, customer_ids=[customer["id"]], statuses=["gathering"])
                   if g["currency"] == currency), None)
    is_new = holder is None
    stamp = format_rfc3339(now)
    if holder is None:
        holder = {"id": new_id(), "number": f"{_number(customer, 0)[:-5]}-GATHERING-{currency}", "type": "standard",
                  "currency": currency, "customer": {"id": customer["id"], "key": customer.get("key"),
                                                     "name": customer.get("name")},
                  "lines": [], "totals": inv_rules.totals(Decimal(0), Decimal(0)), "createdAt": stamp, "updatedAt": stamp}
        inv_rules.set_status(holder, "gathering")
    before = holder["status"]
    holder["lines"] = holder["lines"] + lines
    holder["updatedAt"] = stamp
    if is_new:
        store.put_invoice(namespace, holder)
    else:
        store.put_invoice(namespace, holder, expect_status=before)
    return {"lines": lines, "invoice": holder, "isInvoiceNew": is_new}


def _pending_line(doc: Any, field_name: str, namespace: str, ents: EntitlementStore, now: datetime) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise bad(field_name, "must be a line object")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad(f"{field_name}.name", "is required")
    period = doc.get("period")
    if not isinstance(period, dict):
        raise bad(f"{field_name}.period", "is required: {from, to}")
    start = parse_rfc3339(str(period.get("from")), f"{field_name}.period.from")
    end = parse_rfc3339(str(period.get("to")), f"{field_name}.period.to")
    if end <= start:
        raise bad(f"{field_name}.period.to", "must be after period.from")
    invoice_at = parse_rfc3339(str(doc.get("invoiceAt")), f"{field_name}.invoiceAt")
    price = pricing.parse_price(doc.get("price"), field=f"{field_name}.price")
    feature_key = doc.get("featureKey")
    if not isinstance(price, pricing.FlatPrice):
        feature = ents.get_feature(namespace, str(feature_key)) if feature_key else None
        if feature is None or not feature.get("meterSlug"):
            raise bad(f"{field_name}.featureKey", "a usage price needs a feature with a meter")
    return {"id": new_id(), "name": name, "description": doc.get("description"), "metadata": doc.get("metadata"),
            "type": "flat_fee" if isinstance(price, pricing.FlatPrice) else "usage_based", "managedBy": "manual",
            "status": "valid", "period": {"from": format_rfc3339(start), "to": format_rfc3339(end)},
            "invoiceAt": format_rfc3339(invoice_at), "price": pricing.price_to_json(price), "featureKey": feature_key,
            "createdAt": format_rfc3339(now), "updatedAt": format_rfc3339(now)}


def _rate_pending(namespace: str, line: dict[str, Any], currency: str, subjects: list[str], *, meta: MetaStore,
                  ents: EntitlementStore, usage: UsageStore, now: datetime) -> dict[str, Any]:
    """A one-off line, rated now: its detailed lines as children, exact totals."""
    from billow.services.subscriptions import usage_of

    price = pricing.parse_price(line["price"])
    start, end = parse_rfc3339(line["period"]["from"], "from"), parse_rfc3339(line["period"]["to"], "to")
    qty = Decimal(0) if isinstance(price, pricing.FlatPrice) else \
        usage_of(namespace, line["featureKey"], subjects, start, end, meta=meta, ents=ents, usage=usage)
    rated = pricing.rate(price, qty, currency=currency, rounding="ROUND_HALF_UP", period_start=start, period_end=end,
                         name=line["name"])
    children = [{"id": new_id(), "name": ln.description, "type": "flat_fee", "managedBy": "manual", "status": "valid",
                 "category": ln.category, "quantity": plain(ln.quantity), "perUnitAmount": plain(ln.unit_price),
                 "paymentTerm": ln.payment_term, "period": line["period"], "invoiceAt": line["invoiceAt"],
                 "currency": currency, "totals": inv_rules.totals(ln.amount_rounded, ln.discounts_total)}
                for ln in rated]
    return {**line, "currency": currency, "quantity": plain(qty) if qty else "1", "children": children,
            "totals": inv_rules.sum_totals(children)}


# -- invoice actions -------------------------------------------------------------------------------------------
def get_invoice(namespace: str, id_: str, *, store: Any) -> dict[str, Any]:
    doc = store.get_invoice(namespace, id_)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"invoice {id_!r} not found")
    return dict(doc)


def issue(namespace: str, inv: dict[str, Any], *, store: Any, apps: Any, now: datetime) -> dict[str, Any]:
    """draft -> issuing -> issued (the invoicing app) -> payment (the payment app). An invoice the run issued
    already (sandbox, in its own transaction) only goes to the apps."""
    if inv["status"] not in ("draft", "issuing"):
        apps.issued(inv)
        return inv
    before = inv["status"]
    inv_rules.set_status(inv, "issuing.syncing")
    inv["updatedAt"] = format_rfc3339(now)
    store.put_invoice(namespace, inv, expect_status=before)
    invoicing = inv["workflow"]["apps"]["invoicing"]
    if invoicing == "custom_invoicing":
        return inv  # waits for POST /api/v1/apps/custom-invoicing/{id}/issuing/synchronized
    try:
        if invoicing == "stripe":
            inv["externalIds"] = {**inv.get("externalIds", {}), **apps.stripe_issue(inv)}
    except Exception as exc:  # the app failed: the invoice stays issuing, failed, and can be retried
        log.warning("invoicing app %s failed for %s: %s", invoicing, inv["number"], exc)
        inv_rules.set_status(inv, "issuing.failed", failed=True)
        inv["validationIssues"] = [{"severity": "critical", "code": "app_sync_failed", "component": invoicing,
                                    "message": str(exc) or type(exc).__name__}]
        store.put_invoice(namespace, inv, expect_status="issuing")
        return inv
    return _issued(namespace, inv, store=store, apps=apps, now=now)


def _issue_state(inv: dict[str, Any], now: datetime) -> None:
    """Issued now: issue and due dates, then the payment app's state (the sandbox settles at once); documents due."""
    due_after = inv["workflow"]["workflow"]["invoicing"]["dueAfter"]
    inv["issuedAt"] = format_rfc3339(now)
    inv["dueAt"] = format_rfc3339(now if due_after in ("P0D", "PT0S", "PT0H") else RecurringPeriod(due_after, now).at(1))
    inv["validationIssues"] = []
    payment = inv["workflow"]["apps"]["payment"]
    if payment == "sandbox" or inv_rules.due(inv) <= 0:
        inv_rules.set_status(inv, "paid")  # the sandbox app settles at once; nothing due is paid
    else:
        inv_rules.set_status(inv, "payment_processing.pending")
    inv["updatedAt"] = format_rfc3339(now)
    inv["documents"] = {"status": "pending"}


def _issued(namespace: str, inv: dict[str, Any], *, store: Any, apps: Any, now: datetime) -> dict[str, Any]:
    _issue_state(inv, now)
    store.put_invoice(namespace, inv, expect_status="issuing")
    apps.issued(inv)
    return inv


def act(namespace: str, id_: str, action: str, *, store: Any, apps: Any, now: datetime) -> dict[str, Any]:
    inv = get_invoice(namespace, id_, store=store)
    inv_rules.require(inv, action)
    if action in ("advance", "approve", "retry"):
        if inv["status"] == "issuing":  # retry of a failed app sync
            inv_rules.set_status(inv, "draft.ready_to_issue")
            store.put_invoice(namespace, inv)
        return issue(namespace, inv, store=store, apps=apps, now=now)
    if action == "void":
        before = inv["status"]
        if inv.get("externalIds", {}).get("invoicing") and inv["workflow"]["apps"]["invoicing"] == "stripe":
            apps.stripe_void(inv)
        inv_rules.set_status(inv, "voided")
        inv["voidedAt"] = inv["updatedAt"] = format_rfc3339(now)
        store.put_invoice(namespace, inv, expect_status=before)
        apps.updated(inv)
        return inv
    raise bad("action", f"unknown action {action!r}")


def delete_invoice(namespace: str, id_: str, *, store: Any, now: datetime) -> None:
    inv = get_invoice(namespace, id_, store=store)
    inv_rules.require(inv, "delete")
    inv["deletedAt"] = format_rfc3339(now)
    store.put_invoice(namespace, inv, expect_status=inv["status"])


def update_invoice(namespace: str, id_: str, body: Any, *, store: Any, now: datetime) -> dict[str, Any]:
    inv = get_invoice(namespace, id_, store=store)
    inv_rules.require_mutable(inv)
    if not isinstance(body, dict):
        raise bad("body", "must be an object")
    for key in ("description", "metadata"):
        if key in body:
            inv[key] = body[key]
    inv["updatedAt"] = format_rfc3339(now)
    store.put_invoice(namespace, inv, expect_status=inv["status"])
    return inv


_PAYMENT_STATES = {"paid": "paid", "payment_failed": "payment_processing.failed", "uncollectible": "uncollectible",
                   "voided": "voided", "overdue": "overdue", "action_required": "payment_processing.action_required"}


def record_payment(namespace: str, invoice_id: str, outcome: str, *, store: Any, apps: Any, now: datetime) -> dict[str, Any]:
    """Payment status from the payment app (Stripe webhook, custom invoicing). Idempotent: a repeated outcome
    changes nothing; a paid or voided invoice stays so."""
    inv = get_invoice(namespace, invoice_id, store=store)
    target = _PAYMENT_STATES.get(outcome)
    if target is None:
        raise bad("trigger", f"must be one of {', '.join(_PAYMENT_STATES)}")
    if inv["statusDetails"]["extendedStatus"] == target or inv["status"] in ("paid", "voided"):
        return inv
    if inv["status"] not in ("issued", "payment_processing", "overdue"):
        raise Conflict(f"invoice {inv['number']} is {inv['status']}: it has no payment to record yet")
    before = inv["status"]
    inv_rules.set_status(inv, target, failed=outcome == "payment_failed")
    inv["updatedAt"] = format_rfc3339(now)
    store.put_invoice(namespace, inv, expect_status=before)
    apps.updated(inv)
    return inv


def custom_invoicing_synced(namespace: str, invoice_id: str, stage: str, body: Any, *, store: Any, apps: Any,
                            now: datetime) -> dict[str, Any]:
    """The user's system confirms it synchronised the draft or issued the invoice (custom invoicing app)."""
    inv = get_invoice(namespace, invoice_id, store=store)
    if inv["workflow"]["apps"]["invoicing"] != "custom_invoicing":
        raise Conflict(f"invoice {inv['number']} is not invoiced by the custom invoicing app")
    body = body if isinstance(body, dict) else {}
    if stage == "draft":
        inv_rules.require_mutable(inv)
        inv["externalIds"] = {**inv.get("externalIds", {}), "invoicing": body.get("invoicing", {}).get("invoiceId")}
        inv["updatedAt"] = format_rfc3339(now)
        store.put_invoice(namespace, inv, expect_status=inv["status"])
        return inv
    if inv["status"] != "issuing":
        raise Conflict(f"invoice {inv['number']} is {inv['status']}, not issuing")
    ext = body.get("invoicing") or {}
    if ext.get("invoiceNumber"):
        inv["externalIds"] = {**inv.get("externalIds", {}), "invoicing": ext.get("invoiceId"),
                              "invoiceNumber": ext["invoiceNumber"]}
    return _issued(namespace, inv, store=store, apps=apps, now=now)


def list_invoices(namespace: str, qs: dict[str, list[str]], *, store: Any) -> list[dict[str, Any]]:
    docs = store.list_invoices(namespace, customer_ids=qs.get("customers"), statuses=qs.get("statuses"))
    return [d for d in docs if not d.get("deletedAt")]


# -- one-off lines and prepaid credit -------------------------------------------------------------------------
def add_credit(namespace: str, customer_id: str, body: Any, *, store: Any, meta: MetaStore, now: datetime) -> dict[str, Any]:
    """Prepaid credit (money) for a customer, applied to its next invoices before anything is charged."""
    customer = resolve_customer(namespace, customer_id, meta)
    if not isinstance(body, dict):
        raise bad("body", "must be {amount, currency, description?}")
    currency = Currency.of(body.get("currency"))
    try:
        amount = parse_decimal(body.get("amount"), int_digits=20, scale=18)  # no "1_000"; no Overflow on 1e999999999
    except ValueError:
        raise bad("amount", "must be a decimal string") from None
    if not amount.is_finite() or amount <= 0 or amount != amount.quantize(currency.minor_unit):
        raise bad("amount", f"must be positive with at most {currency.minor_units} decimals for {currency.code}")
    entry = {"id": new_id(), "amount": format(amount, "f"), "currency": currency.code,
             "description": body.get("description"), "createdAt": format_rfc3339(now)}
    store.add_credit(namespace, entry["id"], customer["id"], currency.code, amount, entry)
    return {**entry, "balance": format(store.credit_balance(namespace, customer["id"], currency.code), "f")}


def handle_payment_event(c: Any, event: PaymentEvent) -> dict[str, Any]:
    """A payment app's event (Stripe webhook) applied to its invoice. `c` is the bootstrap Container."""
    if event.status == "finalized":
        return {"invoiceId": event.billow_invoice_id, "status": "unchanged"}
    inv = record_payment(c.namespace, event.billow_invoice_id, event.status, store=c.store(_billing_store()),
                         apps=c.billing_apps(), now=c.clock.now())
    return {"invoiceId": inv["id"], "status": inv["status"]}


def _billing_store() -> type:
    from billow.adapters.sql_billing import SqlBillingStore

    return SqlBillingStore
