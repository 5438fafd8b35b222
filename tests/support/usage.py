"""Event batches for the usage path and their exact ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.conftest import event


def tokens_events(ids: range, *, source: str = "api", day: str = "2026-03-02", model: str = "gpt") -> list[dict[str, Any]]:
    # Amounts with one decimal place: a float sum of these drifts; the exact one does not.
    return [event(f"e{i}", source=source, time=f"{day}T{i % 24:02d}:{i % 60:02d}:00Z", tokens=f"{i % 7}.1", model=model)
            for i in ids]


def truth(events: list[dict[str, Any]]) -> Decimal:
    """The exact sum of `tokens` over the events, each (source, id) counted once (the last one sent)."""
    seen: dict[tuple[str, str], Decimal] = {}
    for e in events:
        seen[(e["source"], e["id"])] = Decimal(e["data"]["tokens"])
    return sum(seen.values(), Decimal(0))


def in_a_process(module: str, phase: str, data_dir: Any, timeout: int = 600) -> Any:
    """Run `module.phase(data_dir)` in a process of its own (chdb opens one data path per process, and migration
    phases change module state); the JSON it printed last."""
    run = subprocess.run([sys.executable, "-c", f"from {module} import {phase}; {phase}({str(data_dir)!r})"],
                         capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=timeout)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])
