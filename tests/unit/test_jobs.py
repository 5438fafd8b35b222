"""The scheduled jobs have one home (billow.services.jobs): functions/billing_run, billow serve's scheduler and
the API's invoice-now call its billing run; functions/notify_dispatch (Lambda and billow serve's dispatcher) its
notification dispatch. A real container (SQLite, in-memory usage store)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from billow.bootstrap import Settings, build
from billow.services import jobs


@pytest.fixture
def c(tmp_path: Any) -> Any:
    return build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), namespace="ns1")))


def test_every_host_runs_the_one_billing_run(c: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from billow.local.scheduler import LocalBillingScheduler
    from functions.billing_run import handler as billing_run

    seen: list[str] = []
    real = jobs.billing_run

    def recording(host: Any, **kw: Any) -> Any:
        seen.append(host.namespace)
        return real(host, **kw)

    monkeypatch.setattr(jobs, "billing_run", recording)
    monkeypatch.setattr(billing_run, "container", lambda: c)
    LocalBillingScheduler(c, every_s=0).tick()
    out = billing_run.lambda_handler({"Records": [{"body": json.dumps({"namespace": "ns2"})}]}, None)
    assert seen == ["ns1", "ns2"] and out["runs"][0]["namespace"] == "ns2"


def test_the_scheduled_run_syncs_entitlements_and_renders_documents(c: Any) -> None:
    result = jobs.billing_run(c, documents_budget_s=0)
    assert (result.invoices, result.failures, result.documents) == ([], [], 0)
    assert jobs.sync_entitlements(c, on_error=lambda sub, exc: None) == 0


def test_no_time_for_documents_reads_no_invoice(c: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench.billing_run times the run without documents (documents_budget_s=0): the run then lists no invoices
    for them (it decoded every issued invoice, lineage and all, to render none)."""
    store = c.billing_store()
    listed: list[Any] = []
    real = store.list_invoices

    def recording(*a: Any, **kw: Any) -> Any:
        listed.append(kw.get("statuses"))
        return real(*a, **kw)

    monkeypatch.setattr(store, "list_invoices", recording)
    assert jobs.render_pending_documents(c, budget_s=0) == 0 and listed == []
    jobs.billing_run(c, documents_budget_s=0)
    assert not any("paid" in (statuses or []) for statuses in listed), listed  # the run's own lists only
    assert jobs.render_pending_documents(c, budget_s=1) == 0 and "paid" in listed[-1]


def test_notification_dispatch_lives_in_jobs(c: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.notify_dispatch import handler as notify

    calls: list[bool] = []
    real = jobs.dispatch_notifications

    def recording(host: Any, **kw: Any) -> Any:
        calls.append(kw["evaluate"])
        return real(host, **kw)

    monkeypatch.setattr(jobs, "dispatch_notifications", recording)
    assert notify.run(c, evaluate=True, send=lambda *a: None, wake=lambda _: None) == {"created": 0, "attempted": 0}
    assert calls == [True]
