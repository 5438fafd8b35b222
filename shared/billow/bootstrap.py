"""The one place that chooses adapters, from a validated settings model.

Embedded default: chdb usage store + SQLite meta store + in-process bus, all under one data directory.
Lambda: settings from BILLOW_* environment variables (ClickHouse over HTTP, PostgreSQL via pg8000)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from billow.ports import EventBus, MetaStore, UsageStore
from billow.timeutil import utcnow


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    data_dir: str = ".billow"
    usage_store: Literal["chdb", "clickhouse", "memory"] = "chdb"
    clickhouse_dsn: str | None = None  # e.g. https://user:pass@host:8443/billow
    meta_store_url: str | None = None  # default: sqlite in data_dir; postgresql+pg8000://... in AWS
    bus: Literal["inprocess"] = "inprocess"
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    meters: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def from_env(cls) -> Settings:
        values: dict[str, Any] = {}
        for name in ("namespace", "data_dir", "usage_store", "clickhouse_dsn", "meta_store_url", "max_body_bytes"):
            env = os.environ.get("BILLOW_" + name.upper())
            if env:
                values[name] = env
        return cls(**values)


class SystemClock:
    def now(self) -> datetime:
        return utcnow()


class FileDeadLetters:
    """Embedded dead-letter destination: one JSON line per record, with the reason (SQS in AWS)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[dict[str, Any]]) -> None:
        from billow import jsonx

        with self._lock:
            self.count += len(items)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as fh:
                    for item in items:
                        fh.write(jsonx.dumps(item) + "\n")


@dataclass
class Container:
    settings: Settings
    meta: MetaStore
    usage: UsageStore
    clock: SystemClock
    dead_letters: FileDeadLetters
    bus: EventBus | None = None
    _sink_lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    @contextlib.contextmanager
    def sink_lock(self) -> Iterator[None]:
        """Serialises sink writes and meter backfills in one process (one partition consumer at a time)."""
        with self._sink_lock:
            yield

    def close(self) -> None:
        if self.bus is not None:
            self.bus.close()
        self.usage.close()
        self.meta.close()


def build(settings: Settings, deliver: Callable[[dict[str, Any]], Any] | None = None) -> Container:
    data = Path(settings.data_dir)
    if settings.usage_store == "chdb" or not settings.meta_store_url:
        data.mkdir(parents=True, exist_ok=True)
    usage: UsageStore
    if settings.usage_store == "memory":
        from billow.adapters.memory import InMemoryUsageStore

        usage = InMemoryUsageStore()
    else:
        from billow.adapters.clickhouse import ClickHouseUsageStore, connect

        dsn = settings.clickhouse_dsn if settings.usage_store == "clickhouse" else f"chdb://{(data / 'usage').resolve()}"
        if not dsn:
            raise ValueError("usage_store=clickhouse needs clickhouse_dsn")
        usage = ClickHouseUsageStore(connect(dsn))
    from billow.adapters.sql import SqlMetaStore

    meta = SqlMetaStore(settings.meta_store_url or f"sqlite:///{(data / 'billow.db').resolve()}")
    usage.migrate()
    meta.migrate()
    dl = FileDeadLetters(data / "dead-letters.jsonl" if settings.usage_store != "memory" or data.exists() else None)
    c = Container(settings=settings, meta=meta, usage=usage, clock=SystemClock(), dead_letters=dl)
    if deliver is not None:
        from billow.adapters.inprocess_bus import InProcessBus

        c.bus = InProcessBus(deliver, c.sink_lock)
    if settings.meters:
        from billow.services.meters import sync_config_meters

        sync_config_meters(settings.namespace, settings.meters, meta=meta, usage=usage, now=c.clock.now(),
                           sink_lock=c.sink_lock)
    return c


_current: Container | None = None
_current_lock = threading.Lock()


def install(c: Container | None) -> None:
    """Make `c` the process-wide container the handlers use (the local host calls this before serving)."""
    global _current
    _current = c


def container() -> Container:
    """The process-wide container; in Lambda it is built once per cold start from the environment."""
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = build(Settings.from_env())
    return _current
