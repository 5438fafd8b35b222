"""bench/ingest.py stops with an error when the server it measures dies, instead of waiting forever."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

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


_DYING_SERVER = """
import http.server, os, sys
posts = 0
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        global posts
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/events"):
            posts += 1
            if posts == 3:
                os._exit(1)  # dies mid-measurement, the client's keep-alive connection open
        self.send_response(201 if self.path.endswith("/meters") else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def test_a_server_that_dies_while_measured_is_an_error_not_a_wait() -> None:
    from bench.ingest import _measure_http

    proc = _server(_DYING_SERVER)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        started = time.monotonic()
        with pytest.raises((ConnectionError, OSError, AssertionError)):
            _measure_http(port, proc.pid, 50, 10, "d-")
        assert time.monotonic() - started < 60
    finally:
        proc.kill()
        proc.wait()



def test_the_statement_timer_keeps_the_look_ups_keywords(tmp_path: Path) -> None:
    """A dedup look-up that reaches the ledger (a resent key) is timed and answered. From 2026-12-06 to 12-07 the
    timer dropped the look-up's `admit` keyword (TypeError), so every measurement on a preloaded store failed. (In a
    process of its own, as the bench measures: chdb opens one engine path per process.)"""
    code = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from bench.ingest import _container, _time_statements, preload
preload({str(tmp_path)!r}, 100)
c = _container({str(tmp_path)!r})
store = c.usage._real() if hasattr(c.usage, "_real") else c.usage
spent = _time_statements(store)
stored, begun = store.written_keys(c.namespace, [("preload", "5"), ("preload", "100")])
c.close()
print(json.dumps({{"stored": sorted(stored), "begun": sorted(begun), "timed": sorted(spent)}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert (got["stored"], got["begun"]) == ([["preload", "5"]], [])
    assert any(k.startswith("SELECT source, id, max(state)") for k in got["timed"])


def test_the_stored_store_is_measured_against_an_empty_one_in_the_same_minutes(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The store-size figure pairs the preloaded store with an empty one, their batches alternated between two
    processes, so the machine's drift (35 % within an hour on the shared machine) falls on both; the empty side holds
    the bench meter (without it, it valued nothing and cost a third of the stored side: 3.3 x at 2 M stored) and its
    total is checked. (The bench runs every store in processes of its own; this process opens none.)"""
    from bench.ingest import main

    main(["--events", "3000", "--batch", "1000", "--preload", "2000", "--paths", "service"])
    out = capsys.readouterr().out
    paired = [line for line in out.splitlines() if line.startswith("  paired (use-case), batches of 1,000:")]
    assert len(paired) == 1, out
    stored_us, empty_us, ratio = re.search(
        r": ([0-9.]+) us CPU/event with 2,000 stored vs ([0-9.]+) on an empty store .*: ([0-9.]+) x", paired[0]).groups()
    assert float(stored_us) > 0 and float(empty_us) > 0
    assert abs(float(stored_us) / float(empty_us) - float(ratio)) < 0.01
    assert "CPU seconds by thread name, stored / empty: " in out
    assert "total of the bench meter: 3996000 (expected 3996000: ok)" in out, out
