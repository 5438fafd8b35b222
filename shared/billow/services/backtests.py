"""Backtests (the pricing lab, docs/pricing-lab.md): `POST /api/v1/billing/backtests` and `billow backtest`.

A request names a candidate plan (a version by id, `KEY` / `KEY@version` / {key, version}: any status, the latest
version without one; or an inline plan body), a window and the customers (all, a list, or those on a plan in the
window). It is checked at once (each bad field a 400), then run as a job: usage for every customer's billing
periods in the window is read in one usage-store query per (meter, span) on SUM and COUNT meters, per (feature,
span) on the others (the billing run's `BatchedUsage`),
each customer rated by `billow.domain.backtest` with the billing run's rating. Rating reads only: nothing of the
catalog, invoices or usage is written.

The job itself is kept in the meta store (`ports.BacktestJobStore`, table backtest_jobs: its spec, status,
progress, failures and result rows with exact amounts), so `GET /api/v1/billing/backtests/{id}` and OpenMeter's
`GET /api/v1/info/progress/{id}` answer from any process. `start` stores it queued and hands it to the host's
`ports.JobRunner` (a thread in `billow serve`; in AWS a message on the billing_run function's job queue, whose
worker calls `execute`); `?wait=true` runs it in the request. A worker claims the job (queued -> running,
compare-and-set: a message delivered twice runs it once), writes progress at most every PROGRESS_EVERY_S seconds
and once at the end, then the result. A job not written for `domain.backtest_jobs.STALE_AFTER` (its worker died or
its message never reached one) reads as failed, and is never run after that."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from billow.domain import backtest as bt
from billow.domain import backtest_jobs as jobs_rules
from billow.domain import catalog as catalog_rules
from billow.domain import subscriptions as subs
from billow.domain.backtest_jobs import Job
from billow.errors import NotFound, ValidationFailed
from billow.ids import new_id
from billow.ports import BacktestJobStore, BillingStore, JobRunner, MetaStore, UsageStore
from billow.services.billing_run import BatchedUsage
from billow.services.entitlements import EntitlementStore
from billow.services.subscriptions import SubscriptionStore
from billow.timeutil import format_rfc3339, parse_rfc3339

log = logging.getLogger("billow.backtests")
bad = ValidationFailed.at
KIND = "backtest"  # the job kind a JobRunner is handed (the queue message's "job")
PROGRESS_EVERY_S = 1.0  # a running job's progress is written at most this often (and once at the end)


@dataclass
class Spec:
    """A checked backtest request."""

    plan: dict[str, Any]  # a plan document (parsed): key, version, currency, billingCadence, phases, ...
    start: datetime
    end: datetime
    customers: list[dict[str, Any]]
    subscriptions: dict[str, list[dict[str, Any]]]  # customer id -> its subscriptions with periods in the window

    def to_doc(self) -> dict[str, Any]:
        """What the job keeps of it: a worker rebuilds the rest (`load_spec`)."""
        return jobs_rules.spec_doc(self.plan, self.start, self.end, [c["id"] for c in self.customers])


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


def _in_window(namespace: str, start: datetime, end: datetime, *,
               store: SubscriptionStore) -> dict[str, list[dict[str, Any]]]:
    """customer id -> its subscriptions with a billing period that starts in [start, end)."""
    in_window: dict[str, list[dict[str, Any]]] = {}
    for d in store.list_subscriptions(namespace):
        if not d.get("deletedAt") and bt.periods(d, start, end):
            in_window.setdefault(d["customerId"], []).append(d)
    return in_window


def load_spec(namespace: str, doc: dict[str, Any], *, store: SubscriptionStore, meta: MetaStore) -> tuple[Spec, list[str]]:
    """A stored job's spec made whole again (the customers and their subscriptions in the window, read now), and the
    ids of customers that no longer exist."""
    start, end = jobs_rules.spec_window(doc)
    in_window = _in_window(namespace, start, end, store=store)
    everyone = {c["id"]: c for c in meta.list_customers(namespace, include_deleted=True)}
    customers = [everyone[cid] for cid in doc["customers"] if cid in everyone]
    gone = [cid for cid in doc["customers"] if cid not in everyone]
    return Spec(doc["plan"], start, end, customers, {c["id"]: in_window.get(c["id"], []) for c in customers}), gone


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
    in_window = _in_window(namespace, start, end, store=store)
    customers = _customers(namespace, body.get("customers"), in_window, meta=meta, store=store)
    field_name = "plan.currency" if isinstance(body["plan"], dict) and "phases" in body["plan"] else "plan"
    for cust in customers:
        theirs = {d["currency"] for d in in_window.get(cust["id"], [])} | ({cust["currency"]} if cust.get("currency") else set())
        if theirs - {plan["currency"]}:
            raise bad(field_name, f"the plan bills in {plan['currency']}, customer "
                                  f"{cust.get('key') or cust['id']!r} in {', '.join(sorted(theirs - {plan['currency']}))}")
    return Spec(plan, start, end, customers, {c["id"]: in_window.get(c["id"], []) for c in customers})


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
    # and term, corrections included) less what voided invoices held, and drafts deleted before a deleted draft
    # gave its part back to the marks (their row is still a draft; one deleted since is `deleted`, not listed here):
    # those few are all that is read.
    dropped = [i for i in billing.list_invoices(namespace, statuses=["voided", "draft"])
               if i["status"] == "voided" or i.get("deletedAt")]
    amounts = bt.billed_amounts(marks, bt.invoiced(dropped, by_id, include_dropped=True))
    r = _Reading(set(marks), amounts, {c["id"]: list((c.get("usageAttribution") or {}).get("subjectKeys") or [])
                                   for c in customers}, BatchedUsage(namespace, meta=meta, ents=ents, usage=usage))
    for cust in customers:
        for d in by_customer.get(cust["id"], []):
            for ps, pe in bt.periods(d, start, end):
                r.batch.want(r.subjects[cust["id"]], subs.usage_spans(d, ps, pe), cust["id"])
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


class _Progress:
    """Counts each customer on the job and writes the progress to the store at most every PROGRESS_EVERY_S."""

    def __init__(self, job: Job, jobs: BacktestJobStore | None, clock: Callable[[], datetime],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.job, self.jobs, self.clock, self.monotonic = job, jobs, clock, monotonic
        self.last = monotonic()

    def tick(self, ok: bool) -> None:
        self.job.tick(ok, self.clock())
        if self.jobs is not None and self.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.flush()

    def beat(self) -> None:
        """The job is alive (a phase ended): its record is written now, progress or not."""
        self.job.updated_at = self.clock()
        self.flush()

    def flush(self) -> None:
        if self.jobs is not None:
            assert self.job.updated_at is not None
            self.jobs.report(self.job.namespace, self.job.id, self.job.success, self.job.failed, self.job.updated_at)
        self.last = self.monotonic()


def compute(job: Job, spec: Spec, progress: _Progress, *, billing: BillingStore, meta: MetaStore,
            ents: EntitlementStore, usage: UsageStore) -> None:
    """Rate every customer of the job (see the module docstring); reads only."""
    ns = job.namespace
    r = _reading(ns, spec.customers, spec.subscriptions, spec.start, spec.end, billing=billing, meta=meta, ents=ents,
                 usage=usage)
    per_customer: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for cust in spec.customers:
        for d in spec.subscriptions[cust["id"]]:
            cand = bt.candidate_subscription(d, spec.plan)
            per_customer.setdefault(cust["id"], []).append((d, cand))
            for ps, pe in bt.periods(cand, spec.start, spec.end):
                r.batch.want(r.subjects[cust["id"]], subs.usage_spans(cand, ps, pe), cust["id"])
    r.batch.fetch()
    progress.beat()  # the usage is read: the job is alive
    for cust in spec.customers:
        try:
            job.rows.append(_rate_customer(cust, per_customer.get(cust["id"], []), spec, r.billed, r.amounts,
                                           r.batch.reader(r.subjects[cust["id"]])))
            progress.tick(True)
        except Exception as exc:  # one customer that cannot be rated fails alone; the others are rated
            log.warning("backtest %s: customer %s failed: %s", job.id, cust["id"], exc)
            job.failures.append({"customerId": cust["id"], "reason": f"{type(exc).__name__}: {exc}"})
            progress.tick(False)


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


def _run(job: Job, load: Callable[[], tuple[Spec, list[str]]], jobs: BacktestJobStore | None, *,
         billing: BillingStore, meta: MetaStore, ents: EntitlementStore, usage: UsageStore,
         clock: Callable[[], datetime]) -> Job:
    """Run a claimed (running) job to its end and write the result (when it is kept)."""
    progress = _Progress(job, jobs, clock)
    try:
        spec, gone = load()
        for cid in gone:
            job.failures.append({"customerId": cid, "reason": "NotFound: the customer no longer exists"})
            progress.tick(False)
        compute(job, spec, progress, billing=billing, meta=meta, ents=ents, usage=usage)
        job.status = "succeeded"
    except Exception as exc:
        log.exception("backtest %s failed", job.id)
        job.status, job.error, job.rows = "failed", f"{type(exc).__name__}: {exc}", []
    job.completed_at = job.updated_at = clock()
    if jobs is not None and not jobs.finish(job):
        log.warning("backtest %s: its result was not written (the job was no longer running: found stale?)", job.id)
    return job


def start(namespace: str, body: Any, *, catalog_store: SubscriptionStore, billing: BillingStore, meta: MetaStore,
          ents: EntitlementStore, usage: UsageStore, clock: Callable[[], datetime], wait: bool = False,
          jobs: BacktestJobStore | None = None, runner: JobRunner | None = None) -> Job:
    """Check the request (400s now), keep the job in `jobs` and hand it to `runner`; with `wait`, run it here and
    return it done. Without `jobs` (a bench, a script) only `wait` is possible and nothing is kept."""
    now = clock()
    spec = parse(namespace, body, store=catalog_store, meta=meta, ents=ents, now=now)
    job = Job(new_id(), namespace, spec.to_doc(), now)
    deps: dict[str, Any] = {"billing": billing, "meta": meta, "ents": ents, "usage": usage, "clock": clock}
    if wait:
        job.status = "running"
        if jobs is not None:
            jobs.forget(namespace, now - jobs_rules.KEEP_FOR)
            jobs.add(job)
        return _run(job, lambda: (spec, []), jobs, **deps)
    if jobs is None or runner is None:
        raise ValueError("a backtest that does not wait needs a job store and a runner")
    jobs.forget(namespace, now - jobs_rules.KEEP_FOR)
    jobs.add(job)
    try:
        runner.submit(KIND, namespace, job.id)
    except Exception as exc:
        job.status, job.error = "failed", f"the job could not be handed to a worker: {type(exc).__name__}: {exc}"
        job.completed_at = job.updated_at = clock()
        jobs.finish(job, expect=("queued",))
        raise
    return job


def execute(namespace: str, id_: str, *, jobs: BacktestJobStore, catalog_store: SubscriptionStore,
            billing: BillingStore, meta: MetaStore, ents: EntitlementStore, usage: UsageStore,
            clock: Callable[[], datetime]) -> Job | None:
    """What a worker does with a job it was handed: claim it and run it. A job another worker has, or one already
    done, is left alone; a stale one (queued or running with no write for STALE_AFTER) is marked failed and not
    run. Returns the job as it ended (None: no such job)."""
    now = clock()
    job = jobs.claim(namespace, id_, now, now - jobs_rules.STALE_AFTER)
    if job is None:
        found = jobs.get(namespace, id_)
        if found is None:
            log.warning("backtest %s: no such job in namespace %s (forgotten?)", id_, namespace)
            return None
        if found.stale(now):
            dead = found.as_seen(now)
            dead.completed_at = dead.updated_at = now
            jobs.finish(dead, expect=jobs_rules.LIVE, last_written_by=now - jobs_rules.STALE_AFTER)
            log.warning("backtest %s: %s", id_, dead.error)
            return dead
        log.info("backtest %s is %s: left alone", id_, found.status)
        return found
    doc = job.spec
    return _run(job, lambda: load_spec(namespace, doc, store=catalog_store, meta=meta), jobs,
                billing=billing, meta=meta, ents=ents, usage=usage, clock=clock)


def get(namespace: str, id_: str, *, jobs: BacktestJobStore, now: datetime, rows: bool = True) -> Job:
    """The job as its readers see it (a stale one reads failed), from whichever process ran it; `rows=False` for
    its progress alone (the result rows are not read)."""
    job = jobs.get(namespace, id_, rows=rows)
    if job is None:
        raise NotFound(f"no backtest or job {id_[:64]!r}")
    return job.as_seen(now)
