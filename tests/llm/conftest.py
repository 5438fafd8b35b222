"""LLM cost tracking through the real handlers (API Gateway v2 events in-process): ingest -> usage sink ->
usage store (the in-memory twin and chdb), the SQLite meta store, a clock the test sets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billow.bootstrap import Settings, build, install
from functions.usage_sink.handler import lambda_handler as sink
from tests.entitlements.conftest import Billow, Clock

__all__ = ["Billow", "Clock"]


def _billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str, usage: str) -> Iterator[Billow]:
    clock = Clock("2026-03-10T00:00:00Z")
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), namespace=namespace)),
              deliver=lambda ev: sink(ev, None))
    own_usage = c.usage
    if usage == "chdb":
        c.usage = request.getfixturevalue("chdb_store")  # one chdb per process; tests keep apart by namespace
    c.clock = clock
    install(c)
    yield Billow(c, clock)
    install(None)
    c.usage = own_usage  # the shared chdb store stays open for the other tests
    c.close()


@pytest.fixture(params=["memory", "chdb"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    yield from _billow(request, tmp_path, namespace, request.param)


@pytest.fixture
def billow_memory(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    """For what does not depend on the usage store (input validation)."""
    yield from _billow(request, tmp_path, namespace, "memory")


def send(b: Billow, events: list[dict[str, Any]]) -> None:
    """POST /api/v1/events in batches, through the ingest handler (the real ingest use-case)."""
    for i in range(0, len(events), 1000):
        status, out = b.call("POST", "/api/v1/events", events[i:i + 1000],
                             content_type="application/cloudevents-batch+json")
        assert status == 204, out
