"""A backtest as a job (the pricing lab, docs/pricing-lab.md): what the meta store keeps of it, and the rules its
readers and workers share. Pure: no I/O, time is an argument.

A job is `queued` when it is accepted, `running` once a worker claimed it, then `succeeded` or `failed`. Its
progress is OpenMeter's Progress (success / failed / total customers, updatedAt). A job that is queued or running
and whose record was not written for `STALE_AFTER` (its worker died, was frozen or timed out, or its message never
reached one) is reported failed, and a worker that gets it later marks it failed instead of running it: a job runs
at most once, and a failed one never comes back."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from billow.domain import backtest as bt
from billow.timeutil import format_rfc3339, parse_rfc3339

STATUSES: Final = ("queued", "running", "succeeded", "failed")
LIVE: Final = ("queued", "running")
STALE_AFTER: Final = timedelta(minutes=15)  # no write for this long: the job's worker is gone
KEEP_FOR: Final = timedelta(days=30)  # finished jobs older than this are forgotten when a new job is made


def row_to_stored(row: bt.Row) -> dict[str, Any]:
    """A result row as the store keeps it: amounts as exact decimal strings (Decimal's own digits)."""
    return {"customerId": row.customer_id, "customerKey": row.customer_key, "customerName": row.name,
            "currency": row.currency, "periods": row.periods, "current": str(row.current),
            "candidate": str(row.candidate)}


def row_from_stored(doc: dict[str, Any]) -> bt.Row:
    return bt.Row(doc["customerId"], doc.get("customerKey"), doc.get("customerName"), doc["currency"],
                  int(doc["periods"]), Decimal(doc["current"]), Decimal(doc["candidate"]))


@dataclass
class Job:
    """One backtest job. `spec` is the checked request as the worker needs it: {plan (the plan document), from, to,
    customers (ids)}; `rows` the per-customer result once it succeeded."""

    id: str
    namespace: str
    spec: dict[str, Any]
    created_at: datetime
    status: str = "queued"
    success: int = 0
    failed: int = 0
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    failures: list[dict[str, str]] = field(default_factory=list)
    rows: list[bt.Row] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.updated_at is None:
            self.updated_at = self.created_at

    @property
    def total(self) -> int:
        return len(self.spec["customers"])

    @property
    def currency(self) -> str:
        return str(self.spec["plan"]["currency"])

    @property
    def done(self) -> bool:
        return self.status not in LIVE

    def tick(self, ok: bool, at: datetime) -> None:
        """One customer rated (ok) or listed under failures."""
        if ok:
            self.success += 1
        else:
            self.failed += 1
        self.updated_at = at

    def stale(self, now: datetime) -> bool:
        """Queued or running and not written for STALE_AFTER: its worker is gone."""
        assert self.updated_at is not None
        return self.status in LIVE and now - self.updated_at >= STALE_AFTER

    def stale_error(self) -> str:
        assert self.updated_at is not None
        return (f"the backtest's worker stopped: the job was {self.status} with no progress since "
                f"{format_rfc3339(self.updated_at)} (over {int(STALE_AFTER.total_seconds() // 60)} minutes); "
                "start it again")

    def as_seen(self, now: datetime) -> Job:
        """The job as readers are told: a stale one is failed, with the reason."""
        if not self.stale(now):
            return self
        return replace(self, status="failed", error=self.stale_error(), rows=[])

    def progress(self) -> dict[str, Any]:
        """OpenMeter's Progress."""
        assert self.updated_at is not None
        return {"success": self.success, "failed": self.failed, "total": self.total,
                "updatedAt": format_rfc3339(self.updated_at)}

    def plan_ref(self) -> dict[str, Any]:
        plan = self.spec["plan"]
        return {"id": plan.get("id"), "key": plan.get("key"), "version": plan.get("version"),
                "currency": plan["currency"]}

    def to_json(self) -> dict[str, Any]:
        ok = self.status == "succeeded"
        rows = self.rows if ok else []
        return {"id": self.id, "status": self.status, "plan": self.plan_ref(),
                "from": self.spec["from"], "to": self.spec["to"],
                "createdAt": format_rfc3339(self.created_at),
                "completedAt": format_rfc3339(self.completed_at) if self.completed_at else None,
                "progress": self.progress(), "error": self.error, "failures": self.failures,
                "customers": [r.to_json() for r in rows],
                "totals": bt.totals(rows, self.currency) if ok else None,
                "distribution": bt.distribution(rows) if ok else None}

    def csv(self) -> str:
        return bt.to_csv(self.rows if self.status == "succeeded" else [])


def spec_doc(plan: dict[str, Any], start: datetime, end: datetime, customer_ids: list[str]) -> dict[str, Any]:
    return {"plan": plan, "from": format_rfc3339(start), "to": format_rfc3339(end), "customers": customer_ids}


def spec_window(spec: dict[str, Any]) -> tuple[datetime, datetime]:
    return parse_rfc3339(spec["from"], "from"), parse_rfc3339(spec["to"], "to")
