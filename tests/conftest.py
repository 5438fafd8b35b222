"""Shared fixtures. chdb opens one data path per process, so each test process gets one chdb store and
tests keep apart by namespace."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from billow.adapters.clickhouse import ClickHouseUsageStore, connect
from billow.adapters.memory import InMemoryUsageStore
from billow.adapters.sql import SqlMetaStore

_ns = itertools.count()


def t(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


def event(i: Any, *, type: str = "prompt", subject: str = "acme", time: str | None = "2026-01-01T00:00:00Z",
          source: str = "test", **data: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"specversion": "1.0", "id": str(i), "source": source, "type": type, "subject": subject, "data": data}
    if time is not None:
        e["time"] = time
    return e


@pytest.fixture
def namespace() -> str:
    return f"t{os.getpid()}_{next(_ns)}"


@pytest.fixture(scope="session")
def chdb_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseUsageStore]:
    store = ClickHouseUsageStore(connect(f"chdb://{tmp_path_factory.mktemp('chdb')}"))
    store.migrate()
    yield store
    store.close()


@pytest.fixture(params=["memory", "chdb"])
def usage_store(request: pytest.FixtureRequest) -> Any:
    """The adapter contract runs against the twin and the real engine alike."""
    if request.param == "memory":
        return InMemoryUsageStore()
    return request.getfixturevalue("chdb_store")


def in_ci() -> bool:
    """CI=true is exported by .ci/run (and by CI providers)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# Skip reasons (substrings) a CI run may still skip for. None: in CI every test runs, so a green run proves
# what the suite claims. Outside CI a skip is only reported (-ra).
ALLOWED_SKIPS: tuple[str, ...] = ()


def _fail_unexpected_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    if any(allowed in reason for allowed in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI ({reason}): in CI every test must run; fix what made it skip, or add the "
                       "reason to ALLOWED_SKIPS in tests/conftest.py and say why")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_unexpected_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_unexpected_skip(outcome.get_result())  # type: ignore[attr-defined]


def require_service(env: str, what: str) -> str:
    """The address scripts/services.sh exported for a real service; a CI run without it fails, a local run
    outside `make test` skips."""
    value = os.environ.get(env)
    if not value:
        if in_ci():
            pytest.fail(f"{env} is not set in CI: scripts/services.sh must start {what}")
        pytest.skip(f"{what} not started (run through `make test`)")
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return require_service("BILLOW_TEST_KAFKA", "the Tansu broker")


@pytest.fixture(scope="session")
def aws_endpoint() -> str:
    return require_service("BILLOW_TEST_AWS_ENDPOINT", "LocalStack")


def sqlite_default_limits(engine: Any) -> None:
    """SQLite connections of `engine` with the limits of SQLite's default build: at most 32,766 parameters a statement.
    The build here takes 250,000; Debian's and most others keep the default, where a list bound a parameter per
    value failed (a customer of 40,000 subjects: "too many SQL variables" on every check)."""
    import sqlite3

    import sqlalchemy as sa

    def limit(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)

    sa.event.listen(engine, "connect", limit)
    engine.dispose()  # connections opened before the listener: closed, the next ones get the limit


@pytest.fixture(params=["sqlite", "postgres"])
def meta_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[SqlMetaStore]:
    if request.param == "sqlite":
        store = SqlMetaStore(f"sqlite:///{tmp_path / 'meta.db'}")
        sqlite_default_limits(store.engine)
    else:
        store = SqlMetaStore(require_service("BILLOW_TEST_PG_URL", "PostgreSQL"))
    store.migrate()
    yield store
    store.close()


@contextmanager
def scratch_database(prefix: str = "billow_t_", options: str = "") -> Iterator[str]:
    """A PostgreSQL database of its own on the services' cluster (CREATE DATABASE ... `options`), dropped after; its
    URL. A server that refuses the options (an ICU locale where none is built) skips the test."""
    import uuid

    import sqlalchemy as sa

    admin_url = require_service("BILLOW_TEST_PG_URL", "PostgreSQL")
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}" {options}'.rstrip()))
    except sa.exc.DBAPIError as exc:
        admin.dispose()
        if not options:
            raise
        pytest.skip(f"this server makes no database {options}: {exc}")
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own on the services' cluster (created, then dropped): a concurrency
    claim shown on SQLite, which serialises writers, is shown here on an engine that does not."""
    with scratch_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def meta_billow(request: pytest.FixtureRequest, tmp_path: Any, namespace: str) -> Iterator[Any]:
    """tests/entitlements' in-process Billow (its harness, usage in memory) on each meta store."""
    from tests.entitlements.conftest import on_meta_store

    with on_meta_store(request, tmp_path, namespace) as b:
        yield b


@pytest.fixture
def sqlite_meta(tmp_path: Any) -> Iterator[SqlMetaStore]:
    store = SqlMetaStore(f"sqlite:///{tmp_path / 'meta.db'}")
    store.migrate()
    yield store
    store.close()


def engine_seen() -> dict[str, Any]:
    """What HeldEngineClient records: queries running now, the most at once, their threads' names in the order they
    began; `go` lets held queries through."""
    return {"lock": threading.Lock(), "running": 0, "peak": 0, "order": [], "go": threading.Event()}


class HeldEngineClient:
    """A real engine client (chdb) whose queries record into `seen` (engine_seen) how many run at once and, those of
    the threads whose names `held` picks (all by default), wait at their start until seen["go"] is set."""

    def __init__(self, client: Any, seen: dict[str, Any], held: Callable[[str], bool] = lambda name: True) -> None:
        self.client, self.seen, self.held = client, seen, held

    def query(self, *args: Any, **kwargs: Any) -> Any:
        seen, name = self.seen, threading.current_thread().name
        with seen["lock"]:
            seen["running"] += 1
            seen["peak"] = max(seen["peak"], seen["running"])
            seen["order"].append(name)
        try:
            if self.held(name):
                assert seen["go"].wait(60)
            return self.client.query(*args, **kwargs)
        finally:
            with seen["lock"]:
                seen["running"] -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


if TYPE_CHECKING:
    from billow.local.server import BillowServer


@contextmanager
def memory_server(data_dir: Path | str, meta_store_url: str | None = None, **limits: Any) -> Iterator[BillowServer]:
    """An in-process `billow serve` (BillowServer) on the in-memory usage store, with no billing schedule, on a free
    port and serving; its meta store SQLite in `data_dir`, or the one at `meta_store_url`; `limits` are BillowServer's
    keyword arguments (timeouts, connection cap). Shut down on exit, giving requests in flight 5 s."""
    from billow.bootstrap import Settings
    from billow.local.server import BillowServer

    settings: dict[str, Any] = {"usage_store": "memory", "data_dir": str(data_dir), "billing_every_s": 0}
    if meta_store_url is not None:
        settings["meta_store_url"] = meta_store_url
    server = BillowServer(Settings.parse(settings), port=0, **limits)
    server.start_background()
    try:
        yield server
    finally:
        server.shutdown(drain_timeout_s=5)


def raw_send(s: socket.socket, pieces: list[tuple[bytes, float]]) -> float:
    """Send each piece, then pause its seconds; a server that answered and closed before all was sent ends the
    sending quietly (what it said is read next). The monotonic time the sending ended."""
    try:
        for piece, pause in pieces:
            s.sendall(piece)
            if pause:
                time.sleep(pause)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return time.monotonic()


def raw_read(s: socket.socket, buf: bytes, deadline: Callable[[bytes], float]) -> tuple[bytes, bool]:
    """Read onto `buf` until the server closes (FIN or reset: True) or the monotonic `deadline(buf)` passes (False);
    the deadline is asked again after each read, so it may move with what came."""
    while (remaining := deadline(buf) - time.monotonic()) > 0:
        s.settimeout(remaining)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return buf, True
        if not chunk:
            return buf, True
        buf += chunk
    return buf, False
