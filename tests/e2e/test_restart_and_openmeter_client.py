"""Data survives a restart (dedup too), config meters, and the unmodified `openmeter` client drives Billow."""

from __future__ import annotations

import datetime as dt
import signal
from pathlib import Path

import pytest
from openmeter import Client

from tests.conftest import event
from tests.e2e.conftest import Server

CONFIG = """
meters:
  - slug: requests
    eventType: request
    aggregation: COUNT
    groupBy: {route: $.route}
"""


def test_restart_keeps_data_and_dedup(tmp_path: Path) -> None:
    (tmp_path / "billow.yaml").write_text(CONFIG)
    srv = Server(tmp_path / "data", tmp_path / "billow.yaml").start()
    try:
        batch = [event(i, type="request", route="/a" if i % 2 else "/b") for i in range(50)]
        assert srv.request("POST", "/api/v1/events", batch, "application/cloudevents-batch+json")[0] == 204
    finally:
        assert srv.stop() == 0
    srv.start()
    try:
        assert srv.request("POST", "/api/v1/events", batch, "application/cloudevents-batch+json")[0] == 204  # resent
        _, _, body = srv.request("GET", "/api/v1/meters/requests/query?groupBy=route")
        assert [(r["groupBy"]["route"], r["value"]) for r in body["data"]] == [("/a", 25), ("/b", 25)]
        status, _, prob = srv.request("DELETE", "/api/v1/meters/requests")
        assert status == 409 and "config" in prob["detail"]
    finally:
        srv.stop()


def test_openmeter_client_ingest_list_query(server: Server) -> None:
    client = Client(endpoint=server.url)
    client.meters.create({"slug": "om_tokens", "eventType": "om_prompt", "aggregation": "SUM",
                          "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}})
    client.events.ingest_event(event("o1", type="om_prompt", time="2026-11-28T10:05:00Z", tokens=30, model="m1"))
    client.events.ingest_events([
        event("o2", type="om_prompt", time="2026-11-28T10:55:00Z", tokens=12.5, model="m2"),
        event("o3", type="om_prompt", time="2026-11-28T11:00:00Z", tokens=7, model="m1"),
        event("o1", type="om_prompt", time="2026-11-28T10:05:00Z", tokens=30, model="m1"),  # duplicate
    ])
    assert "om_tokens" in [m.slug for m in client.meters.list()]
    result = client.meters.query_json(
        "om_tokens", window_size="HOUR", group_by=["model"],
        from_parameter=dt.datetime(2026, 11, 28, 10, tzinfo=dt.UTC), to=dt.datetime(2026, 11, 28, 12, tzinfo=dt.UTC))
    got = [(r.window_start.isoformat(), r.group_by["model"], r.value) for r in result.data]
    assert got == [("2026-11-28T10:00:00+00:00", "m1", 30), ("2026-11-28T10:00:00+00:00", "m2", 12.5),
                   ("2026-11-28T11:00:00+00:00", "m1", 7)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_mid_ingest_loses_no_acknowledged_event(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGKILL: no chance to flush anything. SIGTERM: stop taking requests, finish those in flight, close the
    stores, exit 0. Either way every acknowledged event is there after a restart."""
    import threading
    import time

    (tmp_path / "billow.yaml").write_text(CONFIG)
    srv = Server(tmp_path / "data", tmp_path / "billow.yaml").start()
    batches = [[event(f"k{b}-{i}", type="request", route="/k") for i in range(500)] for b in range(40)]
    acked: list[int] = []

    def send() -> None:
        for n, batch in enumerate(batches):
            try:
                status = srv.request("POST", "/api/v1/events", batch, "application/cloudevents-batch+json")[0]
            except OSError:
                return
            if status == 204:
                acked.append(n)

    sender = threading.Thread(target=send)
    sender.start()
    while len(acked) < 3:
        time.sleep(0.01)
    assert srv.proc is not None
    srv.proc.send_signal(sig)
    code = srv.proc.wait(timeout=60)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    srv.proc = None
    sender.join()
    assert 3 <= len(acked) < len(batches)
    srv.start()
    try:
        def count() -> int:
            _, _, body = srv.request("GET", "/api/v1/meters/requests/query?advancedMeterGroupByFilters=%7B%22route%22%3A%7B%22%24eq%22%3A%22%2Fk%22%7D%7D")
            return int(body["data"][0]["value"]) if body["data"] else 0

        assert count() >= 500 * len(acked)  # every acknowledged event survived the kill
        for batch in batches:  # the client retries everything: nothing counts twice
            assert srv.request("POST", "/api/v1/events", batch, "application/cloudevents-batch+json")[0] == 204
        assert count() == 500 * len(batches)
    finally:
        srv.stop()
