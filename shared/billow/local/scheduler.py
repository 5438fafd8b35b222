"""`billow serve`'s stand-in for the EventBridge schedule of functions/billing_run: a background thread that runs
the billing run every `every_s` seconds (each run is idempotent, so a tick more or less changes nothing)."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("billow.billing")


class LocalBillingScheduler:
    def __init__(self, c: Any, every_s: float) -> None:
        self.c, self.every_s = c, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="billow-billing", daemon=True)

    def start(self) -> LocalBillingScheduler:
        if self.every_s > 0:
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.tick()

    def tick(self) -> Any:
        """One scheduled run. A customer that fails is logged by the run (customer, subscription) and counted
        in `billing_run_failures`; the others are billed and the next tick tries it again."""
        from billow.services import jobs

        try:
            result = jobs.billing_run(self.c)
        except Exception:  # keep the schedule alive; the next tick retries (runs are idempotent)
            log.exception("billing run failed")
            return None
        if result.failures:
            log.error("billing run: %d customer(s) could not be billed, the others were: %s", len(result.failures),
                      result.failures)
        elif result.invoices or result.skipped:
            log.info("billing run: %s", result.to_json())
        return result

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
