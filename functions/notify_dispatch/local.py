"""`billow serve`'s stand-in for the EventBridge schedule and the SQS wake-ups of notify_dispatch: one
background thread that evaluates rules every `evaluate_every_s` and delivers whenever something is due or a
writer calls `delivery.wake`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from billow.adapters import delivery
from billow.adapters.sql_notifications import SqlNotificationStore
from billow.bootstrap import Container
from functions.notify_dispatch.handler import run

log = logging.getLogger("billow.notify")


class LocalDispatcher:
    def __init__(self, c: Container, *, evaluate_every_s: float = 10.0, max_sleep_s: float = 5.0,
                 send: Any = None) -> None:
        self.c, self.evaluate_every_s, self.max_sleep_s, self.send = c, evaluate_every_s, max_sleep_s, send
        self._cv = threading.Condition()
        self._wake_at = 0.0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="billow-notify", daemon=True)

    def start(self) -> LocalDispatcher:
        delivery.set_local_wake(self.wake)
        self._thread.start()
        return self

    def wake(self, delay_s: float) -> None:
        with self._cv:
            self._wake_at = min(self._wake_at, time.monotonic() + max(delay_s, 0.0))
            self._cv.notify()

    def _next_due_s(self) -> float:
        due = self.c.store(SqlNotificationStore).next_due()
        return self.max_sleep_s if due is None else (due - self.c.clock.now()).total_seconds()

    def _loop(self) -> None:
        next_eval = time.monotonic()
        while True:
            with self._cv:
                if self._stop:
                    return
                self._wake_at = float("inf")
            now = time.monotonic()
            try:
                run(self.c, evaluate=now >= next_eval, send=self.send, wake=self.wake)
                wait = min(self._next_due_s(), self.max_sleep_s)
            except Exception:  # keep serving; a store hiccup must not end notifications for the process
                log.exception("notification dispatch failed")
                wait = self.max_sleep_s
            if now >= next_eval:
                next_eval = now + self.evaluate_every_s
            wait = min(wait, next_eval - time.monotonic())
            with self._cv:
                deadline = min(time.monotonic() + max(wait, 0.05), self._wake_at)
                while not self._stop and time.monotonic() < min(deadline, self._wake_at):
                    self._cv.wait(timeout=max(0.01, min(deadline, self._wake_at) - time.monotonic()))

    def close(self) -> None:
        delivery.set_local_wake(None)
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)
