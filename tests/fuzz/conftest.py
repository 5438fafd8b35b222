"""Fixtures of the fuzz tests: a live `billow serve` per test module (started with tests/fuzz/harness.py's
meter config) and an HTTP session."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.conftest import Server
from tests.fuzz.harness import CONFIG, PORTAL_AUTH


def _drain(srv: Server, sink: list[str]) -> None:
    """Keep reading the server's output: an undrained pipe would block its logging (and so the server)."""
    assert srv.proc is not None and srv.proc.stdout is not None
    for line in srv.proc.stdout:
        sink.append(line)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[str]]]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "billow.yaml").write_text(CONFIG)
    srv = Server(root / "data", root / "billow.yaml").start()
    log: list[str] = []
    threading.Thread(target=_drain, args=(srv, log), daemon=True).start()
    # The portal API answers only a portal token: fuzz it with a valid one, so requests reach its handlers.
    PORTAL_AUTH["Authorization"] = "Bearer " + srv.request("POST", "/api/v1/portal/tokens", {"subject": "fuzz"})[2]["token"]
    yield srv, log
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s
