"""`billow backtest` (issue 20 item 1): the job started over the API, a progress bar from
GET /api/v1/info/progress/{id}, the result written as CSV; a refused request prints the problem and exits 2."""

from __future__ import annotations

import io
import json
from typing import Any

from billow.cli import run_backtest
from functions.api.handler import lambda_handler as api
from tests.billing.conftest import Billow
from tests.billing.test_backtest import april
from tests.entitlements.conftest import apigw_event


def requester(b: Billow) -> Any:
    def call(method: str, path: str, body: Any, accept: str) -> tuple[int, str]:
        headers = {"accept": accept, **({"content-type": "application/json"} if body is not None else {})}
        out = api(apigw_event(method, path, headers, b"" if body is None else json.dumps(body).encode(), "127.0.0.1"), None)
        return out["statusCode"], out.get("body") or ""
    return call


def test_cli_writes_csv_with_a_progress_bar(billow: Billow) -> None:
    b = billow
    april(b)
    out, err = io.StringIO(), io.StringIO()
    code = run_backtest(requester(b), {"plan": "basic@1", "from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z",
                                       "customers": ["acme"]}, out=out, err=err, poll_s=0.01)
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0] == "customer_id,customer_key,customer_name,currency,periods,current,candidate,difference,difference_percent"
    assert lines[1].split(",")[1:] == ["acme", "Acme", "USD", "1", "62.49", "62.49", "0.00", "0.00"]
    assert "] 1/1 customers" in err.getvalue() and "difference 0.00" in err.getvalue()


def test_cli_refusal_prints_the_problem(billow: Billow) -> None:
    b = billow
    april(b)
    err = io.StringIO()
    code = run_backtest(requester(b), {"plan": "basic@9", "from": "2026-04-01T00:00:00Z",
                                       "to": "2026-05-01T00:00:00Z"}, out=io.StringIO(), err=err)
    assert code == 2 and "plan.version" in err.getvalue()


def test_cli_draws_the_progress_the_job_ended_with() -> None:
    """The job may end between the progress read and the result read (its progress is written at the end): the
    last bar drawn is the finished job's, not the earlier read."""
    replies = iter([(202, {"id": "J", "status": "queued"}),
                    (200, {"success": 0, "failed": 0, "total": 2, "updatedAt": "2026-05-01T00:10:00Z"}),
                    (200, {"status": "succeeded", "progress": {"success": 1, "failed": 1, "total": 2,
                                                              "updatedAt": "2026-05-01T00:10:01Z"},
                           "totals": {"current": "1", "candidate": "2", "difference": "1", "differencePercent": "100",
                                      "currency": "USD", "customers": 1}}),
                    (200, "customer_id\n")])

    def call(method: str, path: str, body: Any, accept: str) -> tuple[int, str]:
        status, reply = next(replies)
        return status, reply if isinstance(reply, str) else json.dumps(reply)

    out, err = io.StringIO(), io.StringIO()
    assert run_backtest(call, {"plan": "basic@1"}, out=out, err=err, poll_s=0) == 0
    assert err.getvalue().split("\n")[0].rsplit("\r", 1)[-1] == f"backtest [{'#' * 30}] 2/2 customers, 1 failed"
