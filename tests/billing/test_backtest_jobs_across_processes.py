"""Issue 20: a backtest job lives in the meta store, not in the memory of the process that started it. In AWS the API
function that answers `POST /api/v1/billing/backtests` is frozen once it answers, and the progress or result GET
lands on another container: each is a bootstrap build of its own here (two processes' worth of state) on one meta
database (a SQLite file, and PostgreSQL as in AWS), and the reader is also a real second process.

* billow serve: the job runs in a thread of the process that accepted it; another process reads its progress and
  result, the same as `?wait=true` answers.
* AWS: the API container's job runner puts one message on the SQS job queue (LocalStack), the billing_run worker
  handler fed that message runs the job (once, also when the message comes twice), and the API container reads the
  totals `?wait=true` gives, exactly.
* A job whose worker is gone (queued or running, no write for 15 minutes) reads failed, and is never run after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from billow.adapters.memory import InMemoryUsageStore
from billow.bootstrap import Container, Settings, build, install
from billow.domain.backtest_jobs import STALE_AFTER
from billow.services import backtests
from billow.timeutil import format_rfc3339
from functions.billing_run.handler import lambda_handler as worker
from functions.usage_sink.handler import lambda_handler as sink
from tests.billing.test_backtest import april
from tests.entitlements.conftest import METERS, Billow, Clock

REPO = Path(__file__).resolve().parents[2]
BODY = {"plan": "basic@1", "from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}
INLINE = {"plan": {"key": "candidate", "name": "Candidate", "currency": "USD", "billingCadence": "P1M",
                   "phases": [{"key": "default", "name": "Default", "rateCards": [
                       {"type": "usage_based", "key": "tokens", "name": "Tokens", "featureKey": "tokens",
                        "billingCadence": "P1M", "price": {"type": "tiered", "mode": "volume", "tiers": [
                            {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.01"}},
                            {"unitPrice": {"type": "unit", "amount": "0.004"}}]}}]}]},
          "from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}


@pytest.fixture(params=["sqlite", "postgres"])
def meta_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("pg_database"))


class Hosts:
    """The processes of one deployment: containers built from settings on one meta database, sharing the usage
    store (ClickHouse in AWS: here one in-memory store) and a clock the test moves."""

    def __init__(self, url: str, tmp: Path, namespace: str) -> None:
        self.url, self.tmp, self.namespace = url, tmp, namespace
        self.clock = Clock("2026-01-01T00:00:00Z")
        self.usage = InMemoryUsageStore()
        self.made: list[tuple[Container, Any]] = []

    def container(self, **settings: Any) -> Container:
        c = build(Settings.parse(dict(usage_store="memory", data_dir=str(self.tmp / f"c{len(self.made)}"),
                                      namespace=self.namespace, meters=METERS, meta_store_url=self.url, **settings)),
                  deliver=lambda ev: sink(ev, None))
        self.made.append((c, c.usage))
        c.usage, c.clock = self.usage, self.clock
        return c

    def close(self) -> None:
        install(None)
        for c, own in self.made:
            c.usage = own
            c.close()


@pytest.fixture
def hosts(meta_url: str, tmp_path: Path, namespace: str) -> Iterator[Hosts]:
    h = Hosts(meta_url, tmp_path, namespace)
    yield h
    h.close()


def on(c: Container, h: Hosts) -> Billow:
    """Requests now reach this container (what API Gateway's routing to another Lambda container does)."""
    install(c)
    return Billow(c, h.clock)


def read_elsewhere(h: Hosts, job_id: str) -> dict[str, Any]:
    """GET the job's progress, result and CSV from a separate Python process built on the same meta database."""
    code = """
import json, sys
from datetime import datetime
from billow.bootstrap import Settings, build, install
from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
url, ns, data_dir, now, jid = sys.argv[1:]
c = build(Settings.parse(dict(usage_store="memory", data_dir=data_dir, namespace=ns, meta_store_url=url)))
class Fixed:
    def now(self):
        return datetime.fromisoformat(now)
c.clock = Fixed()
install(c)
out = {}
for name, path, accept in (("progress", "/api/v1/info/progress/" + jid, "application/json"),
                           ("result", "/api/v1/billing/backtests/" + jid, "application/json"),
                           ("csv", "/api/v1/billing/backtests/" + jid, "text/csv")):
    r = api(apigw_event("GET", path, {"accept": accept}, b"", "127.0.0.1"), None)
    out[name] = [r["statusCode"], r["body"]]
c.close()
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code, h.url, h.namespace, str(h.tmp / "elsewhere"),
                           h.clock.now().isoformat(), job_id], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: (status, body if k == "csv" else json.loads(body)) for k, (status, body) in out.items()}


def waited(b: Billow, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """What `?wait=true` answers (JSON, then CSV) for the same request."""
    result = b.ok("POST", "/api/v1/billing/backtests", body, query={"wait": "true"})
    from functions.api.handler import lambda_handler as api
    from tests.entitlements.conftest import apigw_event

    out = api(apigw_event("GET", f"/api/v1/billing/backtests/{result['id']}", {"accept": "text/csv"}, b"",
                          "127.0.0.1"), None)
    return result, out["body"]


def same_outcome(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["status"] == want["status"] == "succeeded"
    assert got["totals"] == want["totals"] and got["customers"] == want["customers"]
    assert got["distribution"] == want["distribution"] and got["failures"] == want["failures"] == []


def test_a_job_run_by_one_process_is_read_by_another(hosts: Hosts) -> None:
    h = hosts
    serving, other = h.container(), h.container()  # billow serve: the default thread runner
    b = on(serving, h)
    april(b)
    for body in (BODY, INLINE):
        want, want_csv = waited(b, body)
        status, job = b.call("POST", "/api/v1/billing/backtests", body)
        assert status == 202 and job["status"] == "queued", job
        assert job["progress"] == {"success": 0, "failed": 0, "total": 1, "updatedAt": "2026-05-01T00:10:00Z"}
        assert serving.job_runner().join(job["id"], 60)  # type: ignore[attr-defined]
        r = on(other, h)  # another container of the same deployment
        assert r.ok("GET", f"/api/v1/info/progress/{job['id']}") == {
            "success": 1, "failed": 0, "total": 1, "updatedAt": "2026-05-01T00:10:00Z"}
        same_outcome(r.ok("GET", f"/api/v1/billing/backtests/{job['id']}"), want)
        elsewhere = read_elsewhere(h, job["id"])  # and another process altogether
        assert elsewhere["progress"] == (200, {"success": 1, "failed": 0, "total": 1,
                                               "updatedAt": "2026-05-01T00:10:00Z"})
        assert elsewhere["result"][0] == 200
        same_outcome(elsewhere["result"][1], want)
        assert elsewhere["csv"] == (200, want_csv)
        b = on(serving, h)
    assert read_elsewhere(h, "01JNOSUCHJOB0000000000000")["progress"][0] == 404


@pytest.fixture
def job_queue(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A LocalStack queue made like the billing_run job queue; boto3 in the containers reaches LocalStack."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    sqs = boto3.client("sqs", endpoint_url=aws_endpoint, region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"billow-test-jobs-billing-run-{uuid.uuid4().hex[:8]}",
                           Attributes={"VisibilityTimeout": "1800"})["QueueUrl"]
    yield sqs, url
    sqs.delete_queue(QueueUrl=url)


def received(sqs: Any, url: str) -> list[dict[str, Any]]:
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2, MaxNumberOfMessages=10).get("Messages", [])
    for m in got:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return got


def as_lambda_event(msgs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                         "eventSource": "aws:sqs"} for m in msgs]}


def test_in_aws_the_api_queues_the_job_and_the_worker_runs_it(hosts: Hosts, job_queue: tuple[Any, str]) -> None:
    h, (sqs, url) = hosts, job_queue
    api_c = h.container(job_runner="queue", job_queue_url=url)  # as the stack sets the API function
    worker_c = h.container()  # the billing_run function's container
    b = on(api_c, h)
    april(b)
    for body in (BODY, INLINE):
        want, want_csv = waited(b, body)
        status, job = b.call("POST", "/api/v1/billing/backtests", body)
        assert status == 202 and job["status"] == "queued"
        msgs = received(sqs, url)
        assert [json.loads(m["Body"]) for m in msgs] == [{"job": "backtest", "namespace": h.namespace,
                                                          "id": job["id"]}]
        assert b.ok("GET", f"/api/v1/billing/backtests/{job['id']}")["status"] == "queued"
        h.clock.t += timedelta(minutes=2)  # the worker picks it up a little later
        on(worker_c, h)
        out = worker(as_lambda_event(msgs), None)
        assert [(r["job"], r["id"], r["status"]) for r in out["runs"]] == [("backtest", job["id"], "succeeded")]
        again = worker(as_lambda_event(msgs), None)  # SQS delivers at least once: the job runs once
        assert [r["status"] for r in again["runs"]] == ["succeeded"]
        b = on(api_c, h)
        got = b.ok("GET", f"/api/v1/billing/backtests/{job['id']}")
        same_outcome(got, want)
        assert got["completedAt"] == format_rfc3339(h.clock.now())
        assert b.ok("GET", f"/api/v1/info/progress/{job['id']}")["success"] == 1
        assert received(sqs, url) == []  # nothing else was queued
        from functions.api.handler import lambda_handler as api
        from tests.entitlements.conftest import apigw_event

        csv = api(apigw_event("GET", f"/api/v1/billing/backtests/{job['id']}", {"accept": "text/csv"}, b"",
                              "127.0.0.1"), None)["body"]
        assert csv == want_csv


def test_a_job_whose_worker_is_gone_reads_failed_and_never_runs(hosts: Hosts, job_queue: tuple[Any, str]) -> None:
    h, (sqs, url) = hosts, job_queue
    api_c, worker_c = h.container(job_runner="queue", job_queue_url=url), h.container()
    b = on(api_c, h)
    april(b)
    # A message that never reaches a worker (the queue's consumer failing, the message lost).
    _, lost = b.call("POST", "/api/v1/billing/backtests", BODY)
    lost_msgs = received(sqs, url)
    # A worker that claimed its job and died (Lambda timed out, the container was killed) after some progress.
    _, died = b.call("POST", "/api/v1/billing/backtests", BODY)
    died_msgs = received(sqs, url)
    jobs = worker_c.backtest_jobs()
    assert jobs.claim(h.namespace, died["id"], h.clock.now(), h.clock.now() - STALE_AFTER) is not None
    h.clock.t += timedelta(minutes=14, seconds=59)
    for j in (lost, died):
        assert b.ok("GET", f"/api/v1/billing/backtests/{j['id']}")["status"] in ("queued", "running")
    h.clock.t += timedelta(seconds=1)  # 15 minutes without a write
    for j, was in ((lost, "queued"), (died, "running")):
        got = b.ok("GET", f"/api/v1/billing/backtests/{j['id']}")
        assert got["status"] == "failed" and got["customers"] == [] and got["totals"] is None
        assert got["error"] == (f"the backtest's worker stopped: the job was {was} with no progress since "
                                "2026-05-01T00:10:00Z (over 15 minutes); start it again")
        assert b.ok("GET", f"/api/v1/info/progress/{j['id']}") == {"success": 0, "failed": 0, "total": 1,
                                                                    "updatedAt": "2026-05-01T00:10:00Z"}
    # The messages reach a worker after all (SQS redelivers): it marks the jobs failed and does not run them.
    on(worker_c, h)
    out = worker(as_lambda_event(lost_msgs + died_msgs), None)
    assert [r["status"] for r in out["runs"]] == ["failed", "failed"]
    h.clock.t += timedelta(days=1)
    for j in (lost, died):
        stored = jobs.get(h.namespace, j["id"])
        assert stored is not None and stored.status == "failed" and stored.rows == []
        assert stored.completed_at == stored.updated_at and "worker stopped" in (stored.error or "")


def test_progress_is_written_at_a_bounded_rate() -> None:
    """Per customer the job only counts; the store hears of it at most every PROGRESS_EVERY_S seconds."""
    from billow.adapters.memory_backtests import InMemoryBacktestJobStore
    from billow.domain.backtest_jobs import Job
    from tests.conftest import t

    class Counting(InMemoryBacktestJobStore):
        writes = 0

        def report(self, *args: Any) -> None:
            self.writes += 1
            super().report(*args)

    store, now, seconds = Counting(), t("2026-05-01T00:00:00Z"), [0.0]
    job = Job("01JOB", "ns", {"plan": {"currency": "USD"}, "from": "x", "to": "y",
                              "customers": [str(i) for i in range(1000)]}, now, status="running")
    store.add(job)
    progress = backtests._Progress(job, store, lambda: now, monotonic=lambda: seconds[0])
    for _ in range(1000):  # 1,000 customers rated in 10 s
        seconds[0] += 0.01
        progress.tick(True)
    assert 9 <= store.writes <= 10 and job.success == 1000
    stored = store.get("ns", "01JOB")
    assert stored is not None and stored.success >= 900  # the last write is at most a second behind


def test_a_worker_writes_the_job_once_its_usage_is_read(hosts: Hosts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the usage can take a while before the first customer is rated: the job's record is written when it
    is read, so a live worker's job is not taken for a dead one."""
    from billow.services import jobs as job_service

    h = hosts
    c = h.container()
    b = on(c, h)
    april(b)

    class Idle:
        def submit(self, kind: str, namespace: str, id_: str) -> None:
            pass

    job = backtests.start(h.namespace, BODY, catalog_store=c.catalog_store(), billing=c.billing_store(), meta=c.meta,
                          ents=c.entitlements, usage=c.usage, clock=c.clock.now, jobs=c.backtest_jobs(),
                          runner=Idle())
    store, writes = c.backtest_jobs(), []
    real_report = store.report
    monkeypatch.setattr(store, "report", lambda ns, id_, ok, failed, at: (writes.append(at),
                                                                          real_report(ns, id_, ok, failed, at)))

    class SlowUsage:
        def __getattr__(self, name: str) -> Any:
            return getattr(h.usage, name)

        def aggregate(self, query: Any) -> Any:
            h.clock.t += timedelta(minutes=10)  # a long read
            return h.usage.aggregate(query)

    c.usage = SlowUsage()  # type: ignore[assignment]
    claimed_at = h.clock.now()
    assert job_service.run_job(c, "backtest", h.namespace, job.id)["status"] == "succeeded"
    assert writes and writes[0] > claimed_at  # written after the read, not with the claim's time
    c.usage = h.usage
