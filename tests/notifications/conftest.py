"""Notifications through the real handlers (API Gateway v2 events in-process), a real webhook receiver on
127.0.0.1, the real dispatcher (functions/notify_dispatch) and a clock the test moves. The clock starts at
the wall-clock minute so that Standard Webhooks signatures verify (svix checks the timestamp)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from billow.adapters.delivery import HttpSender, Senders
from billow.bootstrap import Settings, build, install
from billow.timeutil import format_rfc3339
from functions.notify_dispatch.handler import run
from functions.usage_sink.handler import lambda_handler as sink
from tests.entitlements.conftest import METERS, Billow, Clock

SEND_TIMEOUT_S = 0.5  # the slow endpoint below takes longer than this


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver: records every request; per path, a list of (status, delay_s) answers to give in
    turn (the last one repeats)."""

    hits: list[Hit] = field(default_factory=list)
    plans: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, path: str, *answers: tuple[int, float]) -> str:
        self.plans[path] = list(answers)
        return self.url(path)

    def at(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]


def _handler(rx: Receiver) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with rx.lock:
                rx.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                plan = rx.plans.get(self.path) or [(200, 0.0)]
                status, delay = plan.pop(0) if len(plan) > 1 else plan[0]
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the sender gave up (timeout)

    return H


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rx))
    httpd.daemon_threads = True
    rx.port = httpd.server_address[1]
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield rx
    httpd.shutdown()
    httpd.server_close()


class World(Billow):
    """One namespace of a Billow plus its notification dispatcher."""

    send = Senders(HttpSender(timeout_s=SEND_TIMEOUT_S))

    def dispatch(self, evaluate: bool = True) -> dict[str, int]:
        return run(self.c, evaluate=evaluate, send=self.send, wake=lambda _: None)

    def advance(self, **delta: float) -> None:
        self.clock.t = self.clock.t + timedelta(**delta)

    def spend(self, tokens: Any) -> None:
        """Usage now; the clock moves on a minute (the balance engine's resolution)."""
        self.usage(tokens, self.now())
        self.advance(minutes=1)

    def now(self) -> str:
        return format_rfc3339(self.clock.t)

    def channel(self, url: str, **extra: Any) -> dict[str, Any]:
        return self.ok("POST", "/api/v1/notification/channels", {"type": "WEBHOOK", "name": "hook", "url": url, **extra})

    def rule(self, rtype: str, channels: list[str], **extra: Any) -> dict[str, Any]:
        return self.ok("POST", "/api/v1/notification/rules", {"type": rtype, "name": rtype, "channels": channels,
                                                               **extra})

    def events(self, **query: str) -> list[dict[str, Any]]:
        return list(self.ok("GET", "/api/v1/notification/events", query=query or None)["items"])


def wall_minute() -> str:
    return format_rfc3339(datetime.now(UTC).replace(second=0, microsecond=0))


def make_world(tmp_path: Path, namespace: str, **settings: Any) -> Iterator[World]:
    """The notifications world (memory usage store, the METERS, a clock the test moves, subject customer_1);
    `settings` adds to its Settings, e.g. meta_store_url for PostgreSQL."""
    clock = Clock(wall_minute())
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), namespace=namespace, meters=METERS,
                                  **settings)), deliver=lambda ev: sink(ev, None))
    c.clock = clock
    install(c)
    w = World(c, clock)
    w.ok("POST", "/api/v1/subjects", [{"key": "customer_1"}])
    yield w
    install(None)
    c.close()


@pytest.fixture
def world(tmp_path: Path, namespace: str) -> Iterator[World]:
    yield from make_world(tmp_path, namespace)
