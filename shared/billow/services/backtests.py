"""Backtests (the pricing lab, docs/pricing-lab.md): `POST /api/v1/billing/backtests` and `billow backtest`.

A request names a candidate plan (a version by id, `KEY` / `KEY@version` / {key, version}: any status, the latest
version without one; or an inline plan body), a window and the customers (all, a list, or those on a plan in the
window). It is checked at once (each bad field a 400), then run as a job: usage for every customer's billing
periods in the window is read in one usage-store query per (feature, span) (the billing run's `BatchedUsage`),
each customer rated by `billow.domain.backtest` with the billing run's rating, progress counted per customer
(`GET /api/v1/info/progress/{id}`, OpenMeter's Progress). Nothing is written anywhere: the job and its result
live in the memory of the process that ran it (`billow serve`; in AWS Lambda call it with `?wait=true`, which
answers the result at once)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billow.domain import backtest as bt
from billow.domain import catalog as catalog_rules
from billow.domain import subscriptions as subs
from billow.errors import NotFound, ValidationFailed
from billow.ids import new_id
from billow.ports import BillingStore, MetaStore, UsageStore
from billow.services.billing_run import BatchedUsage
from billow.services.entitlements import EntitlementStore
from billow.services.subscriptions import SubscriptionStore
from billow.timeutil import format_rfc3339, parse_rfc3339

log = logging.getLogger("billow.backtests")
bad = ValidationFailed.at
KEEP_JOBS = 50  # finished jobs kept per process (the oldest finished one goes first)


@dataclass
class Spec:
    """A checked backtest request."""

    plan: dict[str, Any]  # a plan document (parsed): key, version, currency, billingCadence, phases, ...
    start: datetime
    end: datetime
    customers: list[dict[str, Any]]
    subscriptions: dict[str, list[dict[str, Any]]]  # customer id -> its subscriptions with periods in the window

    def plan_ref(self) -> dict[str, Any]:
        return {"id": self.plan.get("id"), "key": self.plan.get("key"), "version": self.plan.get("version"),
                "currency": self.plan["currency"]}


def _plan_ref(ref: Any) -> Any:
    if isinstance(ref, str):  # KEY or KEY@version
        key, _, version = ref.partition("@")
        if not key:
            raise bad("plan", "must be KEY, KEY@version, {key, version?}, {id} or a plan body")
        if version and not (version.isascii() and version.isdigit() and len(version) <= 9):
            raise bad("plan.version", f"{version[:32]!r} is not a version number")
        return {"key": key, "version": int(version) if version else None}
    return ref


def resolve_plan(namespace: str, ref: Any, *, store: SubscriptionStore, ents: EntitlementStore) -> dict[str, Any]:
    """The candidate plan of a request (see the module docstring); its rate cards' features must exist and be
    metered where they are rated by usage (errors under `plan.`)."""
    ref = _plan_ref(ref)
    if not isinstance(ref, dict):
        raise bad("plan", "must be KEY, KEY@version, {key, version?}, {id} or a plan body")
    if "phases" in ref:
        try:
            plan = catalog_rules.parse_plan(ref)
        except ValidationFailed as exc:
            errors = [{**e, "field": f"plan.{e['field']}" if e.get("field") else "plan"} for e in exc.errors]
            raise ValidationFailed("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors) from None
        plan = {"id": None, "version": None, **plan}
    elif isinstance(ref.get("id"), str):
        found = store.get_versioned("plan", namespace, ref["id"])
        if found is None or found.get("deletedAt"):
            raise bad("plan.id", f"no plan version {ref['id'][:64]!r}")
        plan = found
    elif isinstance(ref.get("key"), str):
        versions = store.list_versioned("plan", namespace, key=ref["key"])
        if not versions:
            raise bad("plan.key", f"no plan {ref['key'][:64]!r}")
        version = ref.get("version")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int):
                raise bad("plan.version", "must be an integer")
            versions = [v for v in versions if v["version"] == version]
            if not versions:
                raise bad("plan.version", f"plan {ref['key'][:64]!r} has no version {version}")
        plan = versions[-1]
    else:
        raise bad("plan", "must be KEY, KEY@version, {key, version?}, {id} or a plan body")
    cards = catalog_rules.plan_rate_cards(plan)
    keys = {rc["featureKey"] for _, rc in cards if rc.get("featureKey")}
    problems = catalog_rules.publish_problems(cards, {k: ents.get_feature(namespace, k) for k in keys})
    if problems:
        errors = [{"field": f"plan.{f}", "message": m} for f, m in problems]
        raise ValidationFailed("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)
    return plan


def _customers(namespace: str, value: Any, in_window: dict[str, list[dict[str, Any]]], *, meta: MetaStore,
               store: SubscriptionStore) -> list[dict[str, Any]]:
    everyone = {c["id"]: c for c in meta.list_customers(namespace)}
    if value is None or value == "all":
        return [everyone[cid] for cid in sorted(in_window) if cid in everyone]
    if isinstance(value, list):
        out: dict[str, dict[str, Any]] = {}
        for i, ref in enumerate(value):
            found = meta.get_customer(namespace, ref) if isinstance(ref, str) and ref else None
            if found is None:
                raise bad(f"customers[{i}]", f"unknown customer {str(ref)[:64]!r}")
            out[found["id"]] = found
        return list(out.values())
    if isinstance(value, dict) and set(value) == {"planKey"}:
        key = value["planKey"]
        if not isinstance(key, str) or not store.list_versioned("plan", namespace, key=key):
            raise bad("customers.planKey", f"no plan {str(key)[:64]!r}")
        on = {cid for cid, docs in in_window.items() if any((d.get("plan") or {}).get("key") == key for d in docs)}
        return [everyone[cid] for cid in sorted(on) if cid in everyone]
    raise bad("customers", 'must be "all", a list of customer ids or keys, or {"planKey": KEY}')


def parse(namespace: str, body: Any, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore,
          now: datetime) -> Spec:
    """A backtest request checked: every bad field is a 400 naming it."""
    if not isinstance(body, dict):
        raise bad("body", "must be {plan, from, to, customers?}")
    for name in ("from", "to"):
        if not isinstance(body.get(name), str):
            raise bad(name, "is required (an RFC 3339 date-time)")
    start, end = parse_rfc3339(body["from"], "from"), parse_rfc3339(body["to"], "to")
    if end <= start:
        raise bad("to", "must be after from")
    if start >= now:
        raise bad("from", f"is in the future (now is {format_rfc3339(now)}): a backtest replays usage that happened")
    if end > now:
        raise bad("to", f"is in the future (now is {format_rfc3339(now)}): a backtest replays usage that happened")
    if "plan" not in body:
        raise bad("plan", "is required: KEY, KEY@version, {key, version?}, {id} or a plan body")
    plan = resolve_plan(namespace, body["plan"], store=store, ents=ents)
    in_window: dict[str, list[dict[str, Any]]] = {}
    for d in store.list_subscriptions(namespace):
        if not d.get("deletedAt") and bt.periods(d, start, end):
            in_window.setdefault(d["customerId"], []).append(d)
    customers = _customers(namespace, body.get("customers"), in_window, meta=meta, store=store)
    field_name = "plan.currency" if isinstance(body["plan"], dict) and "phases" in body["plan"] else "plan"
    for cust in customers:
        theirs = {d["currency"] for d in in_window.get(cust["id"], [])} | ({cust["currency"]} if cust.get("currency") else set())
        if theirs - {plan["currency"]}:
            raise bad(field_name, f"the plan bills in {plan['currency']}, customer "
                                  f"{cust.get('key') or cust['id']!r} in {', '.join(sorted(theirs - {plan['currency']}))}")
    return Spec(plan, start, end, customers, {c["id"]: in_window.get(c["id"], []) for c in customers})


@dataclass
class Job:
    """A backtest as it runs: OpenMeter's Progress (success / failed / total customers) and, when done, the result."""

    id: str
    namespace: str
    spec: Spec
    created_at: datetime
    clock: Callable[[], datetime]
    status: str = "running"  # running | succeeded | failed
    success: int = 0
    failed: int = 0
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    rows: list[bt.Row] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def tick(self, ok: bool) -> None:
        if ok:
            self.success += 1
        else:
            self.failed += 1
        self.updated_at = self.clock()

    def progress(self) -> dict[str, Any]:
        return {"success": self.success, "failed": self.failed, "total": len(self.spec.customers),
                "updatedAt": format_rfc3339(self.updated_at or self.created_at)}

    def to_json(self) -> dict[str, Any]:
        rows = self.rows if self.status == "succeeded" else []
        currency = self.spec.plan["currency"]
        return {"id": self.id, "status": self.status, "plan": self.spec.plan_ref(),
                "from": format_rfc3339(self.spec.start), "to": format_rfc3339(self.spec.end),
                "createdAt": format_rfc3339(self.created_at),
                "completedAt": format_rfc3339(self.completed_at) if self.completed_at else None,
                "progress": self.progress(), "error": self.error, "failures": self.failures,
                "customers": [r.to_json() for r in rows],
                "totals": bt.totals(rows, currency) if self.status == "succeeded" else None,
                "distribution": bt.distribution(rows) if self.status == "succeeded" else None}

    def csv(self) -> str:
        return bt.to_csv(self.rows if self.status == "succeeded" else [])


@dataclass
class _Reading:
    """What rating the current side reads, fetched once for all customers: billing marks' keys, invoiced amounts,
    each customer's subjects, the usage batch (wanted spans are added, then fetched once)."""

    billed: set[tuple[str, datetime, str]]
    amounts: dict[tuple[str, datetime, str], Decimal]
    subjects: dict[str, list[str]]
    batch: BatchedUsage


def _reading(namespace: str, customers: list[dict[str, Any]], by_customer: dict[str, list[dict[str, Any]]],
             start: datetime, end: datetime, *, billing: BillingStore, meta: MetaStore, ents: EntitlementStore,
             usage: UsageStore) -> _Reading:
    by_id = {d["id"]: d for ds in by_customer.values() for d in ds}
    marks = billing.marks_for(namespace, list(by_id) if len(by_id) <= 500 else None) if by_id else {}
    marks = {k: m for k, m in marks.items() if k[0] in by_id}
    # Invoiced = what the marks say was billed (the sum of every invoice line the billing run wrote for the period
    # and term, corrections included) less what voided or deleted invoices held: those few are all that is read.
    dropped = [i for i in billing.list_invoices(namespace, statuses=["voided", "draft"])
               if i["status"] == "voided" or i.get("deletedAt")]
    amounts = bt.billed_amounts(marks, bt.invoiced(dropped, by_id, include_dropped=True))
    r = _Reading(set(marks), amounts, {c["id"]: list((c.get("usageAttribution") or {}).get("subjectKeys") or [])
                                   for c in customers}, BatchedUsage(namespace, meta=meta, ents=ents, usage=usage))
    for cust in customers:
        for d in by_customer.get(cust["id"], []):
            for ps, pe in bt.periods(d, start, end):
                r.batch.want(r.subjects[cust["id"]], subs.usage_spans(d, ps, pe))
    return r


def current_amounts(namespace: str, start: datetime, end: datetime, *, store: SubscriptionStore, billing: BillingStore,
                    meta: MetaStore, ents: EntitlementStore, usage: UsageStore) -> dict[str, tuple[str, Decimal]]:
    """What each customer pays for its billing periods that start in [start, end), as a backtest's current side
    (invoiced where billed, else the current charges), with its currency: customer id -> (currency, amount)."""
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for d in store.list_subscriptions(namespace):
        if not d.get("deletedAt") and bt.periods(d, start, end):
            by_customer.setdefault(d["customerId"], []).append(d)
    customers = [c for c in meta.list_customers(namespace) if c["id"] in by_customer]
    r = _reading(namespace, customers, by_customer, start, end, billing=billing, meta=meta, ents=ents, usage=usage)
    r.batch.fetch()
    out: dict[str, tuple[str, Decimal]] = {}
    for cust in customers:
        read = r.batch.reader(r.subjects[cust["id"]])
        for d in by_customer[cust["id"]]:
            cur, amount = out.get(cust["id"], (d["currency"], Decimal(0)))
            for period in bt.periods(d, start, end):
                amount += bt.current_owed(d, period, billed=r.billed, invoiced_amounts=r.amounts, usage=read)
            out[cust["id"]] = (cur, amount)
    return out


def compute(job: Job, *, billing: BillingStore, meta: MetaStore, ents: EntitlementStore, usage: UsageStore) -> None:
    """Rate every customer of the job (see the module docstring); reads only."""
    spec, ns = job.spec, job.namespace
    r = _reading(ns, spec.customers, spec.subscriptions, spec.start, spec.end, billing=billing, meta=meta, ents=ents,
                 usage=usage)
    per_customer: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for cust in spec.customers:
        for d in spec.subscriptions[cust["id"]]:
            cand = bt.candidate_subscription(d, spec.plan)
            per_customer.setdefault(cust["id"], []).append((d, cand))
            for ps, pe in bt.periods(cand, spec.start, spec.end):
                r.batch.want(r.subjects[cust["id"]], subs.usage_spans(cand, ps, pe))
    r.batch.fetch()
    for cust in spec.customers:
        try:
            job.rows.append(_rate_customer(cust, per_customer.get(cust["id"], []), spec, r.billed, r.amounts,
                                           r.batch.reader(r.subjects[cust["id"]])))
            job.tick(True)
        except Exception as exc:  # one customer that cannot be rated fails alone; the others are rated
            log.warning("backtest %s: customer %s failed: %s", job.id, cust["id"], exc)
            job.failures.append({"customerId": cust["id"], "reason": f"{type(exc).__name__}: {exc}"})
            job.tick(False)


def _rate_customer(cust: dict[str, Any], pairs: list[tuple[dict[str, Any], dict[str, Any]]], spec: Spec,
                   billed: set[tuple[str, datetime, str]], amounts: dict[tuple[str, datetime, str], Decimal],
                   usage: subs.UsageFn) -> bt.Row:
    current = candidate = Decimal(0)
    n = 0
    for d, cand in pairs:
        for period in bt.periods(d, spec.start, spec.end):
            current += bt.current_owed(d, period, billed=billed, invoiced_amounts=amounts, usage=usage)
        owed, k = bt.candidate_owed(cand, spec.start, spec.end, usage)
        candidate += owed
        n += k
    return bt.Row(cust["id"], cust.get("key"), cust.get("name"), spec.plan["currency"], n, current, candidate)


_JOBS: dict[tuple[str, str], Job] = {}
_LOCK = threading.Lock()


def _keep(job: Job) -> None:
    with _LOCK:
        _JOBS[(job.namespace, job.id)] = job
        finished = [k for k, j in _JOBS.items() if j.done.is_set()]
        for k in finished[:max(0, len(finished) - KEEP_JOBS)]:
            del _JOBS[k]


def run_job(job: Job, *, billing: BillingStore, meta: MetaStore, ents: EntitlementStore, usage: UsageStore) -> Job:
    try:
        compute(job, billing=billing, meta=meta, ents=ents, usage=usage)
        job.status = "succeeded"
    except Exception as exc:
        log.exception("backtest %s failed", job.id)
        job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
    job.completed_at = job.updated_at = job.clock()
    job.done.set()
    return job


def start(namespace: str, body: Any, *, catalog_store: SubscriptionStore, billing: BillingStore, meta: MetaStore,
          ents: EntitlementStore, usage: UsageStore, clock: Callable[[], datetime], wait: bool = False) -> Job:
    """Check the request (400s now), then run it: in a thread of this process, or here when `wait`."""
    now = clock()
    spec = parse(namespace, body, store=catalog_store, meta=meta, ents=ents, now=now)
    job = Job(new_id(), namespace, spec, now, clock)
    _keep(job)
    kwargs: dict[str, Any] = {"billing": billing, "meta": meta, "ents": ents, "usage": usage}
    if wait:
        return run_job(job, **kwargs)
    threading.Thread(target=run_job, args=(job,), kwargs=kwargs, name=f"backtest-{job.id}", daemon=True).start()
    return job


def get(namespace: str, id_: str) -> Job:
    with _LOCK:
        job = _JOBS.get((namespace, id_))
    if job is None:
        raise NotFound(f"no backtest or job {id_[:64]!r} in this process (jobs live in the memory of the process that "
                       "ran them)")
    return job
