"""Readiness: every dependency of this process checked, with how long it took to answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def readiness(checks: dict[str, Callable[[], None]]) -> tuple[bool, dict[str, Any]]:
    out: dict[str, Any] = {}
    ready = True
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            check()
            out[name] = {"status": "ok", "latencyMs": round((time.perf_counter() - start) * 1000, 2)}
        except Exception as exc:  # any failure of a dependency means not ready; say which and why
            ready = False
            out[name] = {"status": "failing", "latencyMs": round((time.perf_counter() - start) * 1000, 2),
                         "error": f"{type(exc).__name__}: {exc}"[:300]}
    return ready, out
