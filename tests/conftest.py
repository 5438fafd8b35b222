"""Shared fixtures. chdb opens one data path per process, so each test process gets one chdb store and
tests keep apart by namespace."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

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


def require_service(env: str, what: str) -> str:
    """The address scripts/services.sh exported for a real service; a CI run without it fails, a local run
    outside `make test` skips."""
    value = os.environ.get(env)
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"{env} is not set in CI: scripts/services.sh must start {what}")
        pytest.skip(f"{what} not started (run through `make test`)")
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return require_service("BILLOW_TEST_KAFKA", "the Tansu broker")


@pytest.fixture(scope="session")
def aws_endpoint() -> str:
    return require_service("BILLOW_TEST_AWS_ENDPOINT", "LocalStack")


@pytest.fixture(params=["sqlite", "postgres"])
def meta_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[SqlMetaStore]:
    if request.param == "sqlite":
        store = SqlMetaStore(f"sqlite:///{tmp_path / 'meta.db'}")
    else:
        store = SqlMetaStore(require_service("BILLOW_TEST_PG_URL", "PostgreSQL"))
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def sqlite_meta(tmp_path: Any) -> Iterator[SqlMetaStore]:
    store = SqlMetaStore(f"sqlite:///{tmp_path / 'meta.db'}")
    store.migrate()
    yield store
    store.close()
