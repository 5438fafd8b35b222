"""CPU per request of JSON bodies through the handlers in-process (embedded: chdb + SQLite, no socket): a small
POST /api/v1/customers (~150 bytes), a POST /api/v1/plans of ~6 KB (a draft plan of 23 rate cards), and two rows
that isolate the body's own cost: a PUT of the 6 KB plan to an unknown plan id and a small meter query of an unknown
meter, each a 404 after the body check and the route's read of the body. For comparison, a POST /api/v1/events of
one event (the ingest handler, which never ran the API's body check; its usage sink in-process, as `billow serve`
runs it). Each figure is this process's CPU time per request (time.process_time around the handler call only) over
--runs requests after --warm not counted, parsed once (as served) and, interleaved request by request, parsed twice
as before 2026-12-07 (the route not given the middleware's parse; the ingest row has no middleware, so there is no
difference there). Each request that makes a customer / plan makes a new one (its own key). The last lines give the
parse alone (billow.web.http.json_body, us per call) of each body: what a second parse of it cost.
Run: .venv/bin/python -m bench.request_body [--runs 400] [--warm 50]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from billow.bootstrap import Settings, build, install
from billow.local.server import apigw_event
from billow.web.http import json_body
from functions.api import bodies
from functions.api.handler import lambda_handler as api
from functions.ingest.handler import lambda_handler as ingest
from functions.usage_sink.handler import lambda_handler as sink


def _card(i: int) -> dict[str, Any]:
    return {"type": "flat_fee", "key": f"fee_{i}", "name": f"Fee {i}", "description": "a monthly platform fee " * 3,
            "billingCadence": "P1M", "price": {"type": "flat", "amount": f"{i}.50", "paymentTerm": "in_advance"}}


def plan(key: str) -> dict[str, Any]:
    tokens = {"type": "usage_based", "key": "tokens", "name": "Tokens", "featureKey": "tokens", "billingCadence": "P1M",
              "price": {"type": "tiered", "mode": "graduated", "tiers": [
                  {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.01"}},
                  {"unitPrice": {"type": "unit", "amount": "0.005"}}]}}
    return {"key": key, "name": key.title(), "currency": "USD", "billingCadence": "P1M",
            "phases": [{"key": "default", "name": "Default", "rateCards": [tokens, *(_card(i) for i in range(22))]}]}


def customer(key: str) -> dict[str, Any]:
    return {"key": key, "name": f"Customer {key}", "currency": "USD",
            "usageAttribution": {"subjectKeys": [f"subject_{key}"]}, "description": "a bench customer"}


def event(i: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"e{i}", "source": "bench", "type": "call", "subject": "customer_1",
            "time": "2026-01-01T00:00:00Z", "data": {"tokens": 12}}


def _request(handler: Any, path: str, body: dict[str, Any], ctype: str = "application/json", method: str = "POST",
             status: tuple[int, ...] = (200, 201, 204)) -> tuple[float, dict[str, Any]]:
    raw = apigw_event(method, path, {"content-type": ctype}, json.dumps(body).encode(), "127.0.0.1")
    t0 = time.process_time()
    out = handler(raw, None)
    spent = time.process_time() - t0
    assert out["statusCode"] in status, out
    return spent, raw


def _per_request(handler: Any, path: str, make: Any, runs: int, warm: int, ctype: str = "application/json",
                 method: str = "POST", status: tuple[int, ...] = (200, 201, 204)) -> str:
    """us/request parsed once (as served) and, interleaved request by request in this process, parsed twice as
    before 2026-12-07 (the route parsing the body again, functions.api.bodies not given the kept parse)."""
    totals = {True: 0.0, False: 0.0}
    for i in range(warm + runs):
        for once in (True, False):
            with _parsed_once(once):
                spent, _ = _request(handler, path, make(2 * i + once), ctype, method, status)
            if i >= warm:
                totals[once] += spent
    once_us, twice_us = totals[True] / runs * 1e6, totals[False] / runs * 1e6
    return f"{once_us:.0f} us/request parsed once, {twice_us:.0f} parsed twice ({twice_us - once_us:+.0f})"


@contextmanager
def _parsed_once(once: bool) -> Iterator[None]:
    if once:
        yield
        return
    real = bodies.json_body
    bodies.json_body = lambda event, *a, kept_in=None: real(event)  # type: ignore[assignment]
    try:
        yield
    finally:
        bodies.json_body = real  # type: ignore[assignment]


def _parse_us(body: dict[str, Any], n: int = 2000) -> tuple[int, float]:
    raw = apigw_event("POST", "/", {"content-type": "application/json"}, json.dumps(body).encode(), "127.0.0.1")
    t0 = time.process_time()
    for _ in range(n):
        json_body(raw)
    return len(raw["body"]), (time.process_time() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--warm", type=int, default=50)
    args, _ = ap.parse_known_args(argv)
    install(build(Settings(data_dir=tempfile.mkdtemp(prefix="billow-bench-body-")), deliver=lambda ev: sink(ev, None)))
    for body, path in (({"slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.tokens"},
                        "/api/v1/meters"),
                       ({"key": "tokens", "name": "Tokens", "meterSlug": "calls"}, "/api/v1/features")):
        _request(api, path, body)
    print(f"plan body {len(json.dumps(plan('p0')))} bytes, customer body {len(json.dumps(customer('c0')))} bytes")
    print(f"POST /api/v1/customers: {_per_request(api, '/api/v1/customers', lambda i: customer(f'c{i}'), args.runs, args.warm)}")
    print(f"POST /api/v1/plans (6 KB): {_per_request(api, '/api/v1/plans', lambda i: plan(f'p{i}'), args.runs, args.warm)}")
    unknown = "/api/v1/plans/01ARZ3NDEKTSV4RRFFQ69G5FAV"  # no such plan: the body checked and parsed, then a 404
    print(f"PUT {unknown} (6 KB, 404 after the body): "
          f"{_per_request(api, unknown, lambda i: plan('p0'), args.runs, args.warm, method='PUT', status=(404,))}")
    print(f"POST /api/v1/meters/nope/query (small, 404 after the body): "
          f"{_per_request(api, '/api/v1/meters/nope/query', lambda i: {'windowSize': 'HOUR'}, args.runs, args.warm, status=(404,))}")
    print(f"POST /api/v1/events (one event, ingest handler, {max(args.runs // 10, 20)} runs): "
          f"{_per_request(ingest, '/api/v1/events', event, max(args.runs // 10, 20), 5, 'application/cloudevents+json')}")
    for name, body in (("customer", customer("c0")), ("plan", plan("p0"))):
        size, us = _parse_us(body)
        print(f"json_body alone, {name} ({size} bytes): {us:.1f} us")
    install(None)


if __name__ == "__main__":
    main()
