"""The jobs, in one home: the billing run (with the entitlement sync before it and the pending invoice documents
after it), the notification dispatch and (on demand, `run_job`) the pricing lab's backtests. Every host calls these: functions/billing_run (EventBridge
Scheduler -> SQS), functions/notify_dispatch (its tick and wake-ups; billow serve's LocalDispatcher), billow
serve's LocalBillingScheduler and `POST /api/v1/billing/invoices/invoice`.

A job gets what it uses from a `JobHost` (bootstrap.Container is one): the current namespace, the stores, the
clock and the apps; the senders and the wake-up a dispatch uses are the host's to give (adapters/delivery.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from billow.ports import BacktestJobStore, BillingApps, BillingStore, Clock, MetaStore, UsageStore
from billow.services import backtests, notifications, subscriptions
from billow.services import billing_run as run_module
from billow.services.billing_run import RunResult
from billow.services.entitlements import EntitlementStore
from billow.services.invoices import issue
from billow.services.notifications import NotificationStore, Send, Wake
from billow.services.subscriptions import SubscriptionStore

log = logging.getLogger("billow.billing")

DISPATCH_BUDGET_S = 240.0  # stop starting deliveries after this (the notify_dispatch job timeout is 5 minutes)
DISPATCH_BATCH = 10  # deliveries per pass between budget checks (each attempt is bounded by the senders' timeout)


class DocumentApps(BillingApps, Protocol):
    def documents(self, inv: dict[str, Any]) -> dict[str, Any]:
        """Render and store the invoice's documents if still pending; their links."""
        ...


class Metrics(Protocol):
    def add(self, name: str, n: int = 1) -> None: ...


class JobHost(Protocol):
    """What the scheduled jobs need from the process hosting them (bootstrap.Container)."""

    @property
    def namespace(self) -> str: ...

    @property
    def meta(self) -> MetaStore: ...

    @property
    def usage(self) -> UsageStore: ...

    @property
    def entitlements(self) -> EntitlementStore: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def metrics(self) -> Metrics: ...

    def billing_store(self) -> BillingStore: ...

    def catalog_store(self) -> SubscriptionStore: ...

    def notification_store(self) -> NotificationStore: ...

    def billing_apps(self) -> DocumentApps: ...

    def backtest_jobs(self) -> BacktestJobStore: ...


def sync_entitlements(host: JobHost, *, on_error: Callable[[dict[str, Any], Exception], None]) -> int:
    """Entitlements of every subscription brought up to date (phase changes, cancelations, add-ons that came
    due); a subscription that fails goes to `on_error` and the others go on."""
    return subscriptions.sync_all(host.namespace, store=host.catalog_store(), meta=host.meta, ents=host.entitlements,
                                  now=host.clock.now(), on_error=on_error)


def billing_run(host: JobHost, *, customer_id: str | None = None, as_of: datetime | None = None,
                documents_budget_s: float = 20.0, lineage: bool = True, line_ids: list[str] | None = None,
                progressive: bool | None = None) -> RunResult:
    """The billing run for the host's (the caller's) namespace: (scheduled, no `customer_id`) the entitlement sync
    first, then services.billing_run.run issuing through the profile's apps, then pending documents. (`lineage=False`
    is bench.billing_run's switch, see services.billing_run.run; no host passes it. `progressive`: see there.)"""
    store = host.billing_store()
    sync_failed: list[tuple[dict[str, Any], Exception]] = []  # one subscription's entitlements never stop the run
    if customer_id is None:  # scheduled: phase changes and cancelations that came due move entitlements first
        sync_entitlements(host, on_error=lambda sub, exc: sync_failed.append((sub, exc)))
    apps = host.billing_apps()
    now = host.clock.now()

    def on_issue(inv: dict[str, Any]) -> dict[str, Any]:
        return issue(host.namespace, inv, store=store, apps=apps, now=now)

    result = run_module.run(host.namespace, store=store, catalog_store=host.catalog_store(), meta=host.meta,
                            ents=host.entitlements, usage=host.usage, now=now, customer_id=customer_id, as_of=as_of,
                            on_issue=on_issue, lineage=lineage, line_ids=line_ids, progressive=progressive)
    for sub, exc in sync_failed:
        result.fail(sub["customerId"], exc, subscription_id=sub["id"])
    if result.failures:  # what the billing_run alarm and `billow serve`'s counters watch
        host.metrics.add("billing_run_failures", len(result.failures))
    result.documents = render_pending_documents(host, budget_s=documents_budget_s)
    return result


def render_pending_documents(host: JobHost, *, budget_s: float) -> int:
    """Render the documents of issued invoices still without them, oldest first, for up to `budget_s` seconds
    (a PDF takes ~0.1 s: a large run leaves the rest to the next run or to the first request). No time, no work: a
    budget of 0 reads no invoice (it read every issued one before rendering none)."""
    if budget_s <= 0:
        return 0
    deadline = time.monotonic() + budget_s
    apps, done = host.billing_apps(), 0
    for inv in host.billing_store().list_invoices(host.namespace, statuses=["issued", "payment_processing", "paid",
                                                                           "overdue", "uncollectible"]):
        if time.monotonic() >= deadline:
            break
        if (inv.get("documents") or {}).get("status") == "pending":
            try:
                apps.documents(inv)
                done += 1
            except Exception:  # one bad document must not hold up the others; the invoice keeps "pending"
                log.exception("documents for invoice %s failed", inv["number"])
    return done


def dispatch_notifications(host: JobHost, *, evaluate: bool, send: Send, wake: Wake,
                           budget_s: float = DISPATCH_BUDGET_S,
                           remaining_s: Callable[[], float] | None = None) -> dict[str, int]:
    """One dispatcher pass: (on a tick) create the notification events that are due, then deliver until nothing
    is due or the budget is spent."""
    store = host.notification_store()
    created = 0
    if evaluate:
        created = len(notifications.evaluate(store=store, entitlements=host.entitlements, meta=host.meta,
                                             usage=host.usage, now=host.clock.now(), wake=lambda _: None))
    attempted, started = 0, time.monotonic()
    while time.monotonic() - started < budget_s and (remaining_s is None or remaining_s() > 30):
        n = notifications.dispatch_due(store=store, send=send, clock=host.clock.now, wake=wake, limit=DISPATCH_BATCH)
        attempted += n
        if n == 0:
            break
    return {"created": created, "attempted": attempted}


JOB_KINDS = (backtests.KIND,)  # the jobs a JobRunner is handed (the API accepts them, a worker runs them)


def run_job(host: JobHost, kind: str, namespace: str, id_: str) -> dict[str, Any]:
    """Run one accepted job (`kind` as the JobRunner was handed it: a thread of billow serve, or the queue's worker
    in AWS); its outcome is in the job store. Returns {job, id, status} (status None: no such job)."""
    if kind != backtests.KIND:
        raise ValueError(f"unknown job kind {kind!r}")
    job = backtests.execute(namespace, id_, jobs=host.backtest_jobs(), catalog_store=host.catalog_store(),
                            billing=host.billing_store(), meta=host.meta, ents=host.entitlements, usage=host.usage,
                            clock=host.clock.now)
    return {"job": kind, "id": id_, "status": job.status if job else None}
