"""bench/ingest.py stops with an error when the server it measures dies, instead of waiting forever."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.ingest import wait_ready


def _server(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_server_that_dies_before_ready_is_an_error() -> None:
    proc = _server("import sys; print('starting', flush=True); sys.exit(3)")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_ready(proc, timeout=60)
    assert time.monotonic() - started < 60


def test_a_server_that_never_gets_ready_is_an_error_after_the_timeout() -> None:
    proc = _server("import time; print('starting', flush=True); time.sleep(600)")
    try:
        with pytest.raises(RuntimeError, match="not ready"):
            wait_ready(proc, timeout=1)
    finally:
        proc.kill()
        proc.wait()


def test_ready_returns() -> None:
    proc = _server("print('billow: ready, listening', flush=True); import time; time.sleep(600)")
    try:
        wait_ready(proc, timeout=60)
    finally:
        proc.kill()
        proc.wait()
