"""Fixtures of the fuzz tests: a live `billow serve` per test module (started with tests/fuzz/harness.py's
meter config) on the meta store the module names (its META_STORE: "sqlite", the default, or "postgres"), and an
HTTP session."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import requests

from tests.conftest import scratch_database
from tests.e2e.conftest import Server
from tests.fuzz.harness import CONFIG, PORTAL_AUTH, FuzzServer


def _drain(srv: Server, sink: list[str]) -> None:
    """Keep reading the server's output: an undrained pipe would block its logging (and so the server)."""
    assert srv.proc is not None and srv.proc.stdout is not None
    for line in srv.proc.stdout:
        sink.append(line)


@pytest.fixture(scope="module")
def fuzz_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    """SQLite: the embedded default, in the server's data directory. PostgreSQL: a database of the module's own on the
    services' cluster, dropped after (without BILLOW_TEST_PG_URL: skipped outside CI, failed in CI)."""
    root = tmp_path_factory.mktemp("fuzz")
    with ExitStack() as stack:
        config = CONFIG
        if getattr(request.module, "META_STORE", "sqlite") == "postgres":
            config = f"meta_store_url: {json.dumps(stack.enter_context(scratch_database('billow_fuzz_')))}\n" + config
        (root / "billow.yaml").write_text(config)
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
