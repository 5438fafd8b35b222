"""Client-side batching: buffer events, send them as one batch when `max_events` are waiting, every
`interval` seconds, and at `close()`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from billow_sdk.client import BillowError

if TYPE_CHECKING:
    from billow_sdk.client import Client

ErrorHandler = Callable[[BillowError, list[dict[str, Any]]], None]


class Batcher:
    """Thread-safe. A batch that still fails after the client's retries goes to `on_error(error, events)`;
    without a handler the error (its events in `error.events`) is raised by the next `flush()` or `close()`.
    Use it as a context manager to close it."""

    def __init__(self, client: Client, *, max_events: int = 500, interval: float = 1.0,
                 on_error: ErrorHandler | None = None) -> None:
        self.client, self.max_events, self.interval, self.on_error = client, max_events, interval, on_error
        self._buf: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards _buf and _failed
        self._send_lock = threading.Lock()  # one batch in flight at a time, in order
        self._failed: BillowError | None = None
        self._closed = threading.Event()
        self._timer = threading.Thread(target=self._tick, name="billow-batcher", daemon=True)
        self._timer.start()

    def add(self, type: str, subject: str, data: Mapping[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """Buffers a new event (id and time fixed now) and returns it."""
        if self._closed.is_set():
            raise RuntimeError("the batcher is closed")
        event = self.client.event(type, subject, data, **kw)
        with self._lock:
            self._buf.append(event)
            full = len(self._buf) >= self.max_events
        if full:
            self._send(raise_errors=False)
        return event

    def flush(self) -> None:
        self._send(raise_errors=True)

    def close(self) -> None:
        self._closed.set()
        self._timer.join()
        self.flush()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tick(self) -> None:
        while not self._closed.wait(self.interval):
            self._send(raise_errors=False)

    def _send(self, *, raise_errors: bool) -> None:
        with self._send_lock:
            while True:
                with self._lock:
                    batch, self._buf = self._buf[:self.max_events], self._buf[self.max_events:]
                if not batch:
                    break
                try:
                    self.client.ingest_batch(batch)
                except BillowError as err:
                    err.events = batch
                    if self.on_error:
                        self.on_error(err, batch)
                    else:
                        with self._lock:
                            self._failed = self._failed or err
        if raise_errors:
            with self._lock:
                failed, self._failed = self._failed, None
            if failed:
                raise failed
