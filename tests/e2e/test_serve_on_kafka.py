"""`billow serve` pointed by config at a real broker (Tansu, started by scripts/services.sh): ingest answers
after the broker acked, the in-process MSK-trigger stand-in feeds the usage sink, totals are exact, and a
restart resumes from the committed offsets without counting anything twice."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Server

BATCH = "application/cloudevents-batch+json"


def total(srv: Server) -> Decimal:
    status, _, body = srv.request("GET", "/api/v1/meters/tokens/query")
    assert status == 200, body
    return sum((Decimal(str(r["value"])) for r in body["data"]), Decimal(0))


def wait_total(srv: Server, expected: Decimal, timeout_s: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if total(srv) == expected:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"total {total(srv)} != {expected} after {timeout_s}s")


def events(ids: range) -> list[dict[str, Any]]:
    return [{"specversion": "1.0", "id": f"k{i}", "source": "e2e", "type": "prompt", "subject": "acme",
             "time": "2026-04-01T12:00:00Z", "data": {"tokens": "0.1"}} for i in ids]


def test_serve_with_kafka_bus(tmp_path: Path, kafka_bootstrap: str) -> None:
    bootstrap = kafka_bootstrap
    ns = "k" + uuid.uuid4().hex[:10]
    config = tmp_path / "billow.yaml"
    config.write_text(f"""namespace: {ns}
bus: kafka
kafka_bootstrap: {bootstrap}
kafka_group: sink-{ns}
meters:
  - slug: tokens
    eventType: prompt
    aggregation: SUM
    valueProperty: $.tokens
""")
    srv = Server(tmp_path / "data", config).start()
    try:
        assert srv.request("POST", "/api/v1/events", events(range(100)), BATCH)[0] == 204
        assert srv.request("POST", "/api/v1/events", events(range(50, 150)), BATCH)[0] == 204  # 50 resent
        wait_total(srv, Decimal("15.0"))
    finally:
        assert srv.stop() == 0
    srv = Server(tmp_path / "data", config).start()
    try:
        assert total(srv) == Decimal("15.0")
        assert srv.request("POST", "/api/v1/events", events(range(140, 200)), BATCH)[0] == 204
        wait_total(srv, Decimal("20.0"))
        time.sleep(1.0)  # nothing old comes again after the restart
        assert total(srv) == Decimal("20.0")
    finally:
        assert srv.stop() == 0
