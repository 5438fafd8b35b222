"""The billing run (scheduled; also `POST /api/v1/billing/invoices/invoice` for one customer now):
1. for every subscription, the billing points that are due (billow.domain.billing.due_points): a period's in-advance fees when it starts, its
   in-arrears fees and usage when it ends (or when the subscription ends inside it);
2. each point is rated (billow.domain.subscriptions.charges, usage from the usage store in one query per
   meter and span for all subscriptions sharing it) and compared, line key by line key, with what its billing
   mark says was billed: the difference is billed. A first run bills everything; a re-run bills nothing; usage
   that arrived late, or a plan change that shortened an in-advance period, shows up as a correction line on
   the next invoice (a period's points are re-checked until `CORRECTION_WINDOW` after the period ends;
   billow.domain.billing.diff);
3. per customer, the lines become one invoice (plus one-off pending lines that are due), prepaid credit is
   applied, and invoice and marks are written in one transaction (ports.BillingStore.commit_billing:
   overlapping runs cannot bill a period twice);
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
from typing import Any

from billow import jsonx
from billow.domain import invoices as inv_rules
from billow.domain import pricing
from billow.domain import subscriptions as subs
from billow.domain.billing import Mark, Point, change, diff, due_points, later_part, progressive_point
from billow.domain.invoices import SYNC_RESUME_WITHIN, CreditBack, Invoice
from billow.domain.lineage import EMPTY as EMPTY_DIGEST
from billow.domain.lineage import UsageDigest, lineage_json
from billow.domain.usage import GroupFilter, UsageQuery, final_value
from billow.errors import Conflict, NotFound, ValidationFailed
from billow.exact import EXACT
from billow.ids import new_id
from billow.ports import BillingStore, InvoiceNumberTaken, MetaStore, SubscriptionStore, UsageStore
from billow.services.billing_profiles import RunContext, resolved_profile
from billow.services.entitlements import EntitlementStore, minute
from billow.services.invoices import new_invoice
from billow.services.lineage import measurement
from billow.services.pending_lines import line_card, rate_pending, split_pending
from billow.timeutil import format_rfc3339, parse_rfc3339

log = logging.getLogger("billow.billing")


class BatchedUsage:
    """Usage for many subscriptions at once: requests are collected first (a rating pass with zero usage), then
    answered with one usage-store query per (meter, span): the features of SUM and COUNT meters grouped by subject
    (a customer's usage is the sum of its subjects'), all the features that filter one meter in one statement
    (`UsageStore.aggregate_each`: a price list of a rate card per model reads its meter once per span, not once per
    model); every other aggregation one query per (feature, span), grouped by customer (a UNIQUE_COUNT is the
    distinct values over all the customer's subjects, a LATEST the last value across them: per-subject values do not
    add up)."""

    ADDITIVE = ("SUM", "COUNT")

    def __init__(self, namespace: str, *, meta: MetaStore, ents: EntitlementStore, usage: UsageStore) -> None:
        self.ns, self.meta, self.ents, self.usage = namespace, meta, ents, usage
        self.wanted: dict[tuple[str, datetime, datetime], set[str]] = defaultdict(set)
        self.values: dict[tuple[str, datetime, datetime], dict[str, Decimal]] = {}
        self.errors: dict[tuple[str, datetime, datetime], Exception] = {}  # raised again to each reader that asks
        self.by_party: set[tuple[str, datetime, datetime]] = set()  # spans whose values are keyed by party, not subject
        # Per (feature, span) each subject's party (its customer; lineage, issue 21: its digest), how it was measured,
        # each customer's digest.
        self.groups: dict[tuple[str, datetime, datetime], dict[str, str]] = defaultdict(dict)
        self.how: dict[tuple[str, datetime, datetime], tuple[dict[str, str], Any, list[list[GroupFilter]]]] = {}
        self.digests: dict[tuple[str, datetime, datetime], dict[str, UsageDigest]] = {}
        self.features: dict[str, tuple[Any, tuple[dict[str, str], Any, list[list[GroupFilter]]]]] = {}

    @staticmethod
    def party(subjects: list[str], customer_id: str = "") -> str:
        """The party `subjects` are read as: the customer (`customer_id`), or without one the subjects themselves."""
        return customer_id or "\x00" + "\x1f".join(sorted(subjects))

    def fits(self, subjects: list[str], spans: list[tuple[str, datetime, datetime]], party: str) -> bool:
        """Whether none of `subjects` is another party's in one of `spans` here (a query puts each subject in one
        party: a subject read for two parties, e.g. a period frozen with a subject that moved since, needs another
        batch)."""
        for f, s, e in spans:
            have = self.groups.get((f, minute(s), minute(e)))
            if have and any(have.get(x, party) != party for x in subjects):
                return False
        return True

    def want(self, subjects: list[str], spans: list[tuple[str, datetime, datetime]], customer_id: str = "") -> None:
        """`subjects` are one party's (a customer's: `customer_id`, or without one the subjects themselves)."""
        party = self.party(subjects, customer_id)
        mine = dict.fromkeys(subjects, party)
        for feature, s, e in spans:
            key = (feature, minute(s), minute(e))
            self.wanted[key].update(subjects)
            self.groups[key].update(mine)

    def _measured(self, feature_key: str) -> tuple[Any, tuple[dict[str, str], Any, list[list[GroupFilter]]]]:
        """The feature's meter and measurement (services.lineage.measurement), read once per run."""
        if (found := self.features.get(feature_key)) is None:
            feature = self.ents.get_feature(self.ns, feature_key, include_archived=True)
            meter = self.meta.get_meter(self.ns, feature["meterSlug"]) if feature and feature.get("meterSlug") else None
            if feature is None or meter is None:
                raise NotFound(f"feature {feature_key!r} has no meter to rate")
            found = self.features[feature_key] = (meter, measurement(feature, meter))
        return found

    SPLIT = ("SUM", "COUNT", "MAX", "UNIQUE_COUNT")

    def splits(self, feature_key: str) -> bool:
        """Whether the feature's usage may be billed in parts (progressive billing): OpenMeter's meters whose value
        over a period only grows with it (rating/service/billableperiod.go isDependingOnIncreaseOnlyMeters: SUM,
        COUNT, MAX, UNIQUE_COUNT; never LATEST, AVG or MIN)."""
        return self._measured(feature_key)[0].aggregation in self.SPLIT

    def fetch(self) -> None:
        shared: dict[tuple[str, datetime, datetime], list[tuple[str, datetime, datetime]]] = defaultdict(list)
        for (feature_key, s, e), subjects in self.wanted.items():
            key = (feature_key, s, e)
            if key in self.values or e <= s or not subjects:
                self.values.setdefault(key, {})
                continue
            try:  # a feature that cannot be rated fails only the subscriptions that read it
                meter, _ = self._measured(feature_key)
                if meter.aggregation in self.ADDITIVE:
                    shared[(meter.id, s, e)].append(key)  # read with the other features of its meter, below
                else:
                    self.values[key] = self._query(feature_key, s, e, subjects)
            except Exception as exc:
                self.errors[key] = exc
        for keys in shared.values():
            if len(keys) > 1:
                try:
                    self._query_each(keys)
                    continue
                except Exception:  # which feature it was is found by reading each on its own
                    log.warning("billing run: one read of %d features of a meter failed; reading them one by one",
                                len(keys), exc_info=True)
            for key in keys:
                try:
                    self.values[key] = self._query(*key, self.wanted[key])
                except Exception as exc:
                    self.errors[key] = exc

    def _query_each(self, keys: list[tuple[str, datetime, datetime]]) -> None:
        """The usage of several features of one SUM or COUNT meter over one span, by subject, in one statement."""
        meter, _ = self._measured(keys[0][0])
        subjects = sorted(set().union(*(self.wanted[k] for k in keys)))  # each reader sums only its own subjects
        rows = self.usage.aggregate_each(UsageQuery(
            namespace=self.ns, meter_id=meter.id, aggregation=meter.aggregation, start=keys[0][1],
            end=keys[0][2] - timedelta(milliseconds=1), window_size=None, window_tz="UTC", subjects=subjects,
            group_by=[], by_subject=True, subject_customers=None), [self._measured(k[0])[1][2] for k in keys])
        for key, found in zip(keys, rows, strict=True):
            self.how[key] = self._measured(key[0])[1]
            self.values[key] = {r.subject or "": final_value(meter.aggregation, r) or Decimal(0) for r in found}

    def _query(self, feature_key: str, s: datetime, e: datetime, subjects: set[str]) -> dict[str, Decimal]:
        meter, (meter_ref, stated, filters) = self._measured(feature_key)
        additive = meter.aggregation in self.ADDITIVE
        parties = self.groups[(feature_key, s, e)]
        rows = self.usage.aggregate(UsageQuery(
            namespace=self.ns, meter_id=meter.id, aggregation=meter.aggregation, start=s,
            end=e - timedelta(milliseconds=1), window_size=None, window_tz="UTC", subjects=sorted(subjects),
            group_by=[], by_subject=additive,
            subject_customers=None if additive else {x: parties[x] for x in sorted(subjects)}, filters=filters))
        self.how[(feature_key, s, e)] = (meter_ref, stated, filters)
        if additive:
            return {r.subject or "": final_value(meter.aggregation, r) or Decimal(0) for r in rows}
        self.by_party.add((feature_key, s, e))
        return {r.customer_id or "": final_value(meter.aggregation, r) or Decimal(0) for r in rows}

    def lineage(self, line: dict[str, Any], customer_id: str, subjects: list[str], now: datetime,
                since: datetime | None) -> dict[str, Any] | None:
        """How a usage line was measured and the digest of the usage behind it (None: not a measured line)."""
        period = line.get("period") or {}
        if not line.get("featureKey") or not period:
            return None
        key = (line["featureKey"], minute(parse_rfc3339(period["from"], "from")), minute(parse_rfc3339(period["to"], "to")))
        if key not in self.how:
            return None
        meter, filters, parsed = self.how[key]
        if key not in self.digests:  # only when the span bills a line: a re-run that bills nothing reads no digest
            self._digest(key)
        return lineage_json(meter=meter, feature_key=key[0], filters=filters, subjects=subjects, start=key[1],
                            end=key[2], query_time=now, since=since,
                            usage=self.digests.get(key, {}).get(customer_id, EMPTY_DIGEST))

    def _digest(self, key: tuple[str, datetime, datetime]) -> None:
        """The digests of `key`'s line, read with those of every other feature measured on its meter over its span
        with the same subjects and parties, not read yet (UsageStore.line_digests_each: one statement)."""
        meter_id, groups = self.how[key][0]["id"], self.groups[key]
        keys = [key] + [k for k, how in self.how.items() if k != key and k not in self.digests and k[1:] == key[1:]
                        and how[0]["id"] == meter_id and self.groups[k] == groups]
        if len(keys) > 1:
            try:
                found = self.usage.line_digests_each(self.ns, meter_id, key[1], key[2],
                                                     [self.how[k][2] for k in keys], groups)
                self.digests.update(zip(keys, found, strict=True))
                return
            except Exception:  # this line's own digest is read alone below (and fails its customer if it fails)
                log.warning("billing run: one digest read of %d features of a meter failed; reading them one by one",
                            len(keys), exc_info=True)
        self.digests[key] = self.usage.line_digests(self.ns, meter_id, key[1], key[2], self.how[key][2], groups)

    def reader(self, subjects: list[str]) -> subs.UsageFn:
        def read(feature: str, s: datetime, e: datetime) -> Decimal:
            key = (feature, minute(s), minute(e))
            if (error := self.errors.get(key)) is not None:
                raise error
            got = self.values.get(key, {})
            # Per subject (SUM, COUNT): the subjects' sum. Per party: the value of the subjects' party (one customer).
            keys = {self.groups[key].get(x, "") for x in subjects} if key in self.by_party else subjects
            with decimal.localcontext(EXACT):
                return sum((got.get(x, Decimal(0)) for x in keys), Decimal(0))
        return read


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

Owed = tuple[list[dict[str, Any]], Mark | None]  # invoice lines and the mark they advance (None: pending lines)
IssueFn = Callable[[dict[str, Any]], dict[str, Any]]
COMMIT_BATCH = 200  # invoices per transaction: a durable commit costs milliseconds, a batch of them one commit


def run(namespace: str, *, store: BillingStore, catalog_store: SubscriptionStore, meta: MetaStore,
        ents: EntitlementStore, usage: UsageStore, now: datetime, customer_id: str | None = None,
        as_of: datetime | None = None, on_issue: IssueFn | None = None, lineage: bool = True,
        line_ids: list[str] | None = None, progressive: bool | None = None) -> RunResult:
    """One billing run (see the module docstring). Idempotent: run it again and nothing changes.

    `line_ids` (with `customer_id`: OpenMeter's `filters.lineIds`) invoices those pending lines of the customer and
    nothing else; each must be one of its pending lines, due by `as_of`, or nothing is invoiced (a 400 naming it).

    `progressive` (with `customer_id`, none of `line_ids`: OpenMeter's InvoicePendingLines; its
    `progressiveBillingOverride`, None: the customer's merged profile's `workflow.invoicing.progressiveBilling`): also
    bill the usage of each subscription's period in progress up to `as_of` (the minute), the prices that may be split
    (billow.domain.billing.progressive_point; the period's end bills the rest). A run for every customer (the
    scheduled one) never does (OpenMeter's collector invoices with partial lines disabled).

    `lineage=False` leaves the lineage (and its digest query) off subscriptions' usage lines: only for
    bench.billing_run, which measures what writing lineage costs (issue 21's budget); every host runs with it on.

    A customer whose subscription, pending line, invoice or commit raises is left out of the run and recorded in
    `RunResult.failures` (and logged); every other customer is billed. Run for one customer (`customer_id`), its
    error is raised after the run."""
    r = _Run(namespace, store, meta, ents, usage, now, customer_id, min(as_of or now, now), on_issue, lineage)
    if line_ids is not None and customer_id is None:
        raise ValidationFailed.at("customerId", "is required to invoice lines by id")
    if customer_id is not None:
        if progressive is None:
            profile = resolved_profile(namespace, customer_id, store=store) or {}
            progressive = bool(profile.get("workflow", {}).get("invoicing", {}).get("progressiveBilling"))
        r.progressive = bool(progressive)
        r.cut = minute(r.as_of) if progressive and line_ids is None else None
    if line_ids is not None:
        assert customer_id is not None  # (refused above)
        r.only = _chosen_lines(namespace, store, customer_id, line_ids, r)
    docs = [] if r.only is not None else [  # lines chosen by id: those alone, no subscription's charges
        d for d in catalog_store.list_subscriptions(namespace, customer_id) if not d.get("deletedAt")]
    r.result.subscriptions = len(docs)
    points_by_sub = r.due(docs)
    for batch in r.batches:
        batch.fetch()
    r.rate(points_by_sub)
    r.take_pending_lines()
    r.commit_and_issue(r.prepare())
    r.result.advanced += _advance_due(namespace, store=store, now=now, on_issue=on_issue, customer_id=customer_id,
                                      result=r.result)
    if customer_id is not None and customer_id in r.result.errors:
        raise r.result.errors[customer_id]
    return r.result


def _chosen_lines(namespace: str, store: BillingStore, customer_id: str, line_ids: list[str], r: _Run) -> set[str]:
    """The pending lines `filters.lineIds` names, each checked: the customer's, pending, billable as of the run's
    `as_of` (`_Run.billable_until`). As OpenMeter's gatherInScopeLines, the lines that are not billable are named all
    at once (its ErrInvoiceLinesNotBillable), each problem at its `filters.lineIds[i]`."""
    if not line_ids:
        raise ValidationFailed.at("filters.lineIds", "must name at least one pending line")
    pending = {ln["id"]: ln for g in store.list_invoices(namespace, customer_ids=[customer_id], statuses=["gathering"])
               for ln in g["lines"]}
    problems = []
    for i, lid in enumerate(line_ids):
        ln = pending.get(lid)
        if ln is None:
            problems.append((f"filters.lineIds[{i}]", f"{lid[:64]!r} is not a pending line of the customer"))
        elif r.billable_until(ln) is None:
            problems.append((f"filters.lineIds[{i}]", f"line {lid!r} is not billable as of {format_rfc3339(r.as_of)}: "
                                                      + r.not_billable_why(ln)))
    if problems:
        raise ValidationFailed("; ".join(f"{f}: {m}" for f, m in problems),
                               [{"field": f, "message": m} for f, m in problems])
    return set(line_ids)


class _Run:
    """The state of one billing run, step by step: due points, rating (usage batched), pending lines, one invoice
    per customer and currency, commit in batches, issuing."""

    def __init__(self, namespace: str, store: BillingStore, meta: MetaStore, ents: EntitlementStore,
                 usage: UsageStore, now: datetime, customer_id: str | None, as_of: datetime,
                 on_issue: IssueFn | None, lineage: bool = True) -> None:
        self.ns, self.store, self.meta, self.ents, self.usage = namespace, store, meta, ents, usage
        self.now, self.customer_id, self.as_of, self.on_issue = now, customer_id, as_of, on_issue
        self.lineage = lineage
        self.only: set[str] | None = None  # the pending lines chosen by id (filters.lineIds), else every due one
        self.cut: datetime | None = None  # progressive billing: periods in progress are billed up to this minute
        self.progressive = False  # progressive billing applies (pending usage lines are billed up to `as_of`)
        self.result = RunResult()
        self.customers = {c["id"]: c for c in meta.list_customers(namespace)}
        self.batch = BatchedUsage(namespace, meta=meta, ents=ents, usage=usage)
        self.batches = [self.batch]  # more only when a subject is read for two parties in one span (see `_read_as`)
        self.subjects_of: dict[str, list[str]] = {}
        # Per (subscription, period, subjects read): the batch that reads them and the party they are read as.
        self.reads: dict[tuple[str, tuple[datetime, datetime], tuple[str, ...], datetime | None],
                         tuple[BatchedUsage, str]] = {}
        # One invoice per customer and currency (a customer may pay in more than one).
        self.per_customer: dict[tuple[str, str], list[Owed]] = defaultdict(list)
        self.gathering: dict[tuple[str, str], list[tuple[dict[str, Any], str]]] = defaultdict(list)

    def due(self, docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[Point]]]:
        """Each subscription's due points; the usage their periods need is asked of the batch."""
        marks = self.store.marks_for(self.ns, [d["id"] for d in docs] if self.customer_id else None)
        out = []
        for d in docs:
            try:
                points = due_points(d, self.as_of, marks, self.now)
                if self.cut is not None and (part := progressive_point(d, self.as_of, self.cut, marks)) is not None:
                    points.append(part)
                cust = self.customers.get(d["customerId"]) or self.meta.get_customer(self.ns, d["customerId"]) or {}
                self.subjects_of[d["id"]] = list((cust.get("usageAttribution") or {}).get("subjectKeys") or [])
                for ps, subjects, until in {(p.period, self._subjects(d, p), p.until) for p in points}:
                    self._read_as(d, ps, subjects, until)
            except Exception as exc:
                self.result.fail(d["customerId"], exc, subscription_id=d["id"])
                continue
            out.append((d, points))
        return out

    def rate(self, points_by_sub: list[tuple[dict[str, Any], list[Point]]]) -> None:
        """Rate each subscription's due periods and keep what each point owes beyond its mark."""
        for d, points in points_by_sub:
            self.result.points += len(points)
            try:
                owed = self._owed(d, points)
            except Exception as exc:
                self.result.fail(d["customerId"], exc, subscription_id=d["id"])
                continue
            self.per_customer[(d["customerId"], d["currency"])] += owed

    def _subjects(self, d: dict[str, Any], p: Point) -> tuple[str, ...]:
        """The subjects a point's usage is read with: those its period was billed with (its mark records them), else
        the customer's now (a new point; a mark written before marks recorded them)."""
        if p.mark.rev > 0 and p.mark.subjects is not None:
            return p.mark.subjects
        return tuple(self.subjects_of[d["id"]])

    def _read_as(self, d: dict[str, Any], period: tuple[datetime, datetime], subjects: tuple[str, ...],
                 until: datetime | None) -> None:
        """Ask a batch for the usage of `subjects` over the period's spans: as the customer when they are its subjects
        of now, else as that subject set (its own party: a non-additive meter reads them apart from the customer's
        subjects of now), in the first batch where no subject is another party's."""
        current = sorted(self.subjects_of[d["id"]]) == sorted(subjects)
        party = BatchedUsage.party(list(subjects), d["customerId"] if current else "")
        spans = subs.usage_spans(d, period[0], period[1], until=until, splits=self.batch.splits)
        batch = next((b for b in self.batches if b.fits(list(subjects), spans, party)), None)
        if batch is None:
            batch = BatchedUsage(self.ns, meta=self.meta, ents=self.ents, usage=self.usage)
            self.batches.append(batch)
        batch.want(list(subjects), spans, party)
        self.reads[(d["id"], period, subjects, until)] = (batch, party)

    def _owed(self, d: dict[str, Any], points: list[Point]) -> list[Owed]:
        rated: dict[tuple[tuple[datetime, datetime], tuple[str, ...], datetime | None], list[subs.Charge]] = {}
        owed: list[Owed] = []
        for p in points:
            subjects = self._subjects(d, p)
            batch, party = self.reads[(d["id"], p.period, subjects, p.until)]
            if (key := (p.period, subjects, p.until)) not in rated:
                rated[key] = subs.charges(d, p.period[0], p.period[1], usage=batch.reader(list(subjects)),
                                          until=p.until, splits=self.batch.splits)
            lines, billed = diff(p, rated[key], self.now)
            for ln in lines if self.lineage else ():
                # (a correction's events are those since the mark; a progressively billed point's next part is no
                # correction: its lineage is its measurement, the period up to where it bills)
                since = p.mark.billed_at if p.mark.rev > 0 and p.mark.until is None else None
                if (lin := batch.lineage(ln, party, list(subjects), self.now, since)) is not None:
                    ln["lineage"] = lin
            later_part(lines, p)
            # The mark records the subjects its period was billed with, and what this run billed of it (filed under
            # the invoice's id in _prepare: a deleted draft gives it back). A point seen for the first time is marked
            # even when it bills nothing, so that it closes CORRECTION_WINDOW after its period as every billed point
            # does (unmarked, it stayed open for ever: re-rated by every run, its late usage billed however late). A
            # progressively billed point's part is written when it bills something (a part that bills nothing changes
            # nothing), with where it bills up to and where it stood before (`was`); the period's end always writes it
            # whole (the rest billed, `until` cleared: the point no longer billed in parts).
            parted = p.until is not None or p.mark.until is not None
            if billed != p.mark.billed or (p.until is None if parted else p.mark.rev == 0):
                owed.append((lines, replace(p.mark, billed=billed, subjects=subjects, reopened=False, until=p.until,
                                            change=change(p.mark.billed, billed),
                                            was=(p.mark.until or p.period[0]) if parted else None)))
        return owed

    def billable_until(self, line: dict[str, Any]) -> datetime | None:
        """Where a pending line is billable up to as of the run's `as_of` (its period's end: whole; earlier: the part
        up to there, the rest stays pending), None when it is not billable (`_billable`)."""
        return self._billable(line)[0]

    def not_billable_why(self, line: dict[str, Any]) -> str:
        """Why `billable_until` found the line not billable (for the 400 naming it)."""
        return self._billable(line)[1]

    def _billable(self, line: dict[str, Any]) -> tuple[datetime | None, str]:
        """(where the line is billable up to, or None; why not). OpenMeter's gatherInScopeLines with rating's
        ResolveBillablePeriod, in whole minutes: a flat price when its invoiceAt has come; a usage price when its
        period has ended (and its invoiceAt has come, without progressive billing); with progressive billing a usage
        price that may be split (not a volume tiered price; a meter whose value only grows: SUM, COUNT, MAX,
        UNIQUE_COUNT) as soon as its period has started, up to `as_of`."""
        as_of = minute(self.as_of)
        start = parse_rfc3339(line["period"]["from"], "from")
        end = parse_rfc3339(line["period"]["to"], "to")
        due = minute(parse_rfc3339(line["invoiceAt"], "invoiceAt")) <= as_of
        price, _ = line_card(line)
        if isinstance(price, pricing.FlatPrice):
            return (end, "") if due else (None, f"its invoiceAt is {line['invoiceAt']}")
        if not self.progressive and not due:
            return None, f"its invoiceAt is {line['invoiceAt']} (progressive billing would bill its usage up to asOf)"
        if self.progressive and self._splits(line, price):
            if as_of <= minute(start):
                return None, f"its period starts at {line['period']['from']}"
            return (end if as_of >= minute(end) else as_of), ""
        if as_of >= minute(end):
            return end, ""
        return None, f"its period ends at {line['period']['to']}" + (
            " (its price is not billed in parts)" if self.progressive else "")

    def _splits(self, line: dict[str, Any], price: pricing.Price) -> bool:
        """Whether a usage line may be billed in parts (OpenMeter's ProgressiveBillingMeteredPricer and
        isDependingOnIncreaseOnlyMeters)."""
        volume = isinstance(price, pricing.TieredPrice) and price.mode == "volume"
        return not volume and bool(line.get("featureKey")) and self.batch.splits(line["featureKey"])

    def take_pending_lines(self) -> None:
        """Pending lines billable as of `as_of` (`billable_until`), rated now, join their customer's invoice; their
        holders lose them. A line billable up to a point before its period's end is split there (progressive
        billing): its part up to there is invoiced, the rest stays pending as a new line."""
        for g in self.store.list_invoices(self.ns, customer_ids=[self.customer_id] if self.customer_id else None,
                                          statuses=["gathering"]):
            if g["customer"]["id"] in self.result.errors:
                continue
            cust = self.customers.get(g["customer"]["id"]) or {}
            subjects = list((cust.get("usageAttribution") or {}).get("subjectKeys") or [])
            taken: list[dict[str, Any]] = []
            rated_lines: list[dict[str, Any]] = []
            rest: list[dict[str, Any]] = []
            try:
                for ln in g["lines"]:
                    if (self.only is not None and ln["id"] not in self.only) or (until := self.billable_until(ln)) is None:
                        continue
                    taken.append(ln)
                    if until < parse_rfc3339(ln["period"]["to"], "to"):
                        part, later = split_pending(self.ns, ln, until, g["currency"], subjects, meta=self.meta,
                                                    ents=self.ents, usage=self.usage, now=self.now)
                        rated_lines.append(part)
                        rest.append(later)
                    else:
                        rated_lines.append(rate_pending(self.ns, ln, g["currency"], subjects, meta=self.meta,
                                                        ents=self.ents, usage=self.usage, now=self.now))
            except Exception as exc:
                self.result.fail(g["customer"]["id"], exc, invoice_id=g["id"])
                continue
            if not taken:
                continue
            key = (g["customer"]["id"], g["currency"])
            self.per_customer[key].append((rated_lines, None))
            before = jsonx.dumps(g)
            self.gathering[key].append(({**g, "lines": [ln for ln in g["lines"] if ln not in taken] + rest,
                                         "updatedAt": format_rfc3339(self.now)}, before))

    def prepare(self) -> list[_Prepared]:
        """One invoice (or marks only) per customer and currency, credit applied, numbered."""
        ctx = RunContext(self.store.list_profiles(self.ns), self.store.list_overrides(self.ns),
                         self.store.invoice_counts(self.ns), self.store.credit_balances(self.ns))
        prepared = []
        for key, parts in self.per_customer.items():
            if key[0] in self.result.errors:
                continue  # all of a failed customer waits for the next run (one invoice, never a part of it)
            try:
                prep = _prepare(self.ns, key[0], parts, self.customers, ctx, now=self.now, result=self.result,
                                gathering=self.gathering.get(key, []))
            except Exception as exc:
                self.result.fail(key[0], exc)
                continue
            if prep is not None:
                prepared.append(prep)
        return prepared

    def commit_and_issue(self, prepared: list[_Prepared]) -> None:
        for start in range(0, len(prepared), COMMIT_BATCH):
            for item in _commit(self.ns, prepared[start:start + COMMIT_BATCH], store=self.store, now=self.now,
                                result=self.result):
                if item.invoice is not None:
                    self.result.invoices.append(self._issue(item.customer, item.invoice))

    def _issue(self, customer: dict[str, Any], inv: dict[str, Any]) -> dict[str, Any]:
        try:
            typed = Invoice.from_json(inv)
            if self.on_issue is not None and typed.extended_status == "draft.ready_to_issue":
                inv = self.on_issue(inv)
            elif self.on_issue is not None and typed.status != "draft":
                self.on_issue(inv)  # issued in the batch (sandbox): the apps still hear of it
        except Exception as exc:  # the invoice is written; its issuing failed for this customer only
            self.result.fail(customer["id"], exc, invoice_id=inv["id"])
        return inv


@dataclass
class _Prepared:
    customer: dict[str, Any]
    invoice: dict[str, Any] | None
    marks: list[Mark]
    credit: tuple[str, Decimal] | CreditBack | None  # prepaid credit used, or given back (ports.BillingCommit)
    gathering: list[tuple[dict[str, Any], str]]  # pending-line holders without the lines taken (new doc, old JSON)
    seq: int = 0  # the count of the customer's invoices the invoice is numbered with (0: no invoice)


def _prepare(namespace: str, customer_id: str, parts: list[Owed],
             customers: dict[str, dict[str, Any]], ctx: RunContext, *, now: datetime,
             result: RunResult, gathering: list[tuple[dict[str, Any], str]]) -> _Prepared | None:
    customer = customers.get(customer_id)
    profile = ctx.profile(customer_id)
    if customer is None or profile is None:
        reason = "customer deleted" if customer is None else "no billing profile: create one (POST /api/v1/billing/profiles)"
        result.skipped.append({"customerId": customer_id, "reason": reason})
        return None
    lines = [ln for ls, _ in parts for ln in ls]
    invoice: dict[str, Any] | None = None
    credit: tuple[str, Decimal] | CreditBack | None = None
    if lines:
        ctx.counts[customer_id] = ctx.counts.get(customer_id, 0) + 1
        invoice = new_invoice(namespace, customer, profile, lines[0]["currency"], lines, number=ctx.counts[customer_id],
                              now=now)
        inv = Invoice.from_json(invoice)
        balance = ctx.credits.get((customer_id, inv.currency), Decimal(0))
        if balance > 0 and inv.due > 0:
            credit = (new_id(), min(balance, inv.due))
            inv.totals = inv_rules.sum_totals(invoice["lines"], credit[1])
        if inv.extended_status == "draft.ready_to_issue" and inv.invoicing_app == "sandbox":
            inv.issued(now)  # nothing leaves Billow: issued in the same transaction as its lines
            if inv.owed_back > 0:  # (a negative invoice used no prepaid credit: credit applies to positive totals)
                # The sandbox keeps nothing (SandboxInvoicing.keeps_customer_credit is False): what the invoice owes the
                # customer is its prepaid credit, given back in this transaction (the other apps: invoices._issued).
                credit = inv.credit_back(now)
        invoice = inv.to_json()
    marks = [m for _, m in parts if m is not None]
    if invoice is not None:  # each mark records what this invoice billed of it (and, a progressively billed point's,
        # where the point's billing stood before it: billing.Mark.split_from)
        marks = [replace(m, invoices={**m.invoices, invoice["id"]: m.change},
                         split_from={**m.split_from, invoice["id"]: format_rfc3339(m.was)} if m.was is not None else m.split_from)
                 for m in marks]
    return _Prepared(customer, invoice, marks, credit, gathering, ctx.counts[customer_id] if invoice else 0)


def _commit(namespace: str, batch: list[_Prepared], *, store: BillingStore, now: datetime, result: RunResult) -> list[_Prepared]:
    """Commit a batch in one transaction; if a concurrent run got there first for any of it, commit one by one so
    that only the customers it billed are skipped (their invoice is the other run's)."""
    try:
        store.commit_billing(namespace, [(p.invoice, p.marks, p.credit, p.gathering) for p in batch], now)
        return batch
    except Conflict:
        if len(batch) == 1:
            if batch[0].invoice is not None:  # a lost race over points that bill nothing (both runs mark them so) took
                # nothing from this customer: nothing was due either way, not a skip
                result.skipped.append({"customerId": batch[0].customer["id"],
                                       "reason": "billed by a concurrent run meanwhile; its invoice stands"})
            return []
    except Exception as exc:  # rolled back: find the customer it was by committing one by one
        if len(batch) == 1:
            if isinstance(exc, InvoiceNumberTaken) and _counted_meanwhile(namespace, batch[0], store):
                result.skipped.append({"customerId": batch[0].customer["id"],
                                       "reason": "a concurrent run invoiced it meanwhile (its invoice number "
                                                 f"{(batch[0].invoice or {}).get('number')} is taken)"})
            else:
                result.fail(batch[0].customer["id"], exc, invoice_id=(batch[0].invoice or {}).get("id"))
            return []
    done = []
    for p in batch:
        done += _commit(namespace, [p], store=store, now=now, result=result)
    return done


def _counted_meanwhile(namespace: str, p: _Prepared, store: BillingStore) -> bool:
    """Whether the customer's invoices, counted again, reach the count its taken number was made from: another run
    made an invoice meanwhile (a lost race, as on a mark: skipped, the next run numbers afresh), else the number is
    wrong and the customer fails."""
    return store.invoice_counts(namespace).get(p.customer["id"], 0) >= p.seq > 0


def _advance_due(namespace: str, *, store: BillingStore, now: datetime, on_issue: IssueFn | None,
                 customer_id: str | None, result: RunResult) -> int:
    """Drafts whose draft period ended are issued; an app sync whose process died (Invoice.sync_interrupted) is made
    again; issued invoices past due become overdue (one invoice failing is recorded and leaves the others to
    advance)."""
    n = 0
    for inv in store.list_invoices(namespace, customer_ids=[customer_id] if customer_id else None,
                                   statuses=["draft", "issuing", "issued", "payment_processing"]):
        if inv.get("deletedAt"):
            continue  # a deleted draft is never issued (deleted before the store kept it apart)
        try:
            n += _advance_one(namespace, inv, store=store, now=now, on_issue=on_issue)
        except Conflict:
            continue  # a concurrent run moved it first
        except Exception as exc:
            result.fail(inv["customer"]["id"], exc, invoice_id=inv["id"])
    return n


def _advance_one(namespace: str, inv: dict[str, Any], *, store: BillingStore, now: datetime,
                 on_issue: IssueFn | None) -> int:
    invoice = Invoice.from_json(inv)
    if invoice.sync_stale(now):  # repeated now, the app's idempotency keys may have lapsed: a person decides
        invoice.issue_failed(invoice.invoicing_app, (
            f"the sync to {invoice.invoicing_app} was interrupted (its process died) more than "
            f"{SYNC_RESUME_WITHIN.total_seconds() / 3600:g} hours ago, longer than the app's idempotency keys are "
            f"kept: look in {invoice.invoicing_app} for an invoice with metadata billow_invoice_id={invoice.id} "
            "(void or keep it) before retrying"))
        try:
            store.put_invoice(namespace, invoice.to_json(), expect_status="issuing", expect_doc=jsonx.dumps(inv))
        except Conflict:
            return 0  # changed meanwhile (a concurrent run marked it, or it was retried): as it stands now
        return 1
    if invoice.auto_approval_due(now) or invoice.sync_interrupted(now):
        if on_issue is not None:
            on_issue(inv)
            return 1
    elif invoice.overdue_at(now):
        before = invoice.status
        invoice.set_status("overdue")
        invoice.touch(now)
        store.put_invoice(namespace, invoice.to_json(), expect_status=before)
        return 1
    return 0
