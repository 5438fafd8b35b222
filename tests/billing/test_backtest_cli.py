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
