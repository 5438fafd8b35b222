"""bench.serve_concurrency (issue 17 item 4): its mix rows are held to the item's own budget, labelled as such, and
the bench ends with an error instead of waiting when the server dies or stops answering."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from bench import serve_concurrency as bench


def test_the_mix_rows_are_held_to_item_4s_budget() -> None:
    ingest, checks = bench.mix_budgets(2000.0, [10.0] * 99 + [49.0], 1100.0, 150.0)
    assert ingest == "progresses (>0 events/s) ok"
    assert checks == ">=50% of alone (55% of 2,000 req/s) and p99<50ms ok"
    assert bench.mix_budgets(2000.0, [10.0] * 100, 900.0, 0.0) == (
        "progresses (>0 events/s) over", ">=50% of alone (45% of 2,000 req/s) and p99<50ms over")
    assert bench.mix_budgets(2000.0, [10.0] * 98 + [60.0] * 2, 1500.0, 10.0)[1].endswith("p99<50ms over")


def test_the_other_rows_say_their_budget_is_below_http() -> None:
    assert bench.below_http_budget("check", [0.2, 0.3, 0.9], 500.0) == "cached p99<1ms (below HTTP) ok"
    assert bench.below_http_budget("check", [1.0, 2.0, 9.0], 500.0) == "cached p99<1ms (below HTTP) over"
    assert bench.below_http_budget("query", [10.0, 20.0], 50.0) == "p99<100ms (below HTTP) ok"
    assert bench.below_http_budget("ingest", [100.0], 2000.0) == ">=100k ev/s (below HTTP) over"


def _in_thread(fn: object, limit_s: float) -> BaseException | None:
    """Run fn on a daemon thread; what it raised, or fail if it is still running after limit_s (it would hang)."""
    raised: list[BaseException] = []

    def go() -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 (returned to the test)
            raised.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"still waiting after {limit_s} s"
    return raised[0] if raised else None


def test_a_server_that_stops_answering_ends_the_cell_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that takes connections and never answers (hung): each request times out; before, one client's three
    warm-up requests waited 120 s each, and the start barrier without a timeout waited for them."""
    monkeypatch.setattr(bench, "REQUEST_TIMEOUT_S", 0.3)
    with socket.create_server(("127.0.0.1", 0), backlog=64) as hung:  # connects complete in the backlog
        port = hung.getsockname()[1]
        t0 = time.monotonic()
        exc = _in_thread(lambda: bench.run("127.0.0.1", port, 0.3, [bench.check] * 2), 30)
    assert isinstance(exc, bench.ServerGone) and "server" in str(exc), exc
    assert time.monotonic() - t0 < 30


def test_a_dead_server_ends_the_bench_instead_of_printing_rows_of_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here any more
    exc = _in_thread(lambda: bench.drive(f"http://127.0.0.1:{port}", [1], 0.2, 10), 30)
    assert isinstance(exc, bench.ServerGone) and "no request of the cell succeeded" in str(exc), exc
    assert "query " not in capsys.readouterr().out  # no row of the dead server's errors


def test_a_server_that_exits_between_cells_ends_the_bench() -> None:
    """`gone` (the process exited) is asked after each cell: the cell it died in is not printed."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        port = listener.getsockname()[1]
        stop = threading.Event()

        def answer() -> None:  # a minimal HTTP/1.1 server: 200 {} to every request on the connection
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:  # closed at the end of the test
                    return
                threading.Thread(target=_serve_conn, args=(conn, stop), daemon=True).start()

        acceptor = threading.Thread(target=answer, daemon=True)
        acceptor.start()
        try:
            exc = _in_thread(lambda: bench.drive(f"http://127.0.0.1:{port}", [1], 0.2, 10,
                                                 gone=lambda: "billow serve exited with -9"), 30)
        finally:
            stop.set()
            acceptor.join(5)
    assert isinstance(exc, bench.ServerGone), exc
    assert "billow serve exited with -9 during the query x 1 cell" in str(exc), exc


def _serve_conn(conn: socket.socket, stop: threading.Event, seen: list[str] | None = None) -> None:
    """Answer each request: 204 to an event batch, else 200 {}; its request line appended to `seen`."""
    conn.settimeout(0.5)
    buf = b""
    with conn:
        while not stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                line = head.split(b"\r\n", 1)[0].decode()
                if seen is not None:
                    seen.append(line)
                if line.startswith("POST /api/v1/events "):
                    conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


def test_a_server_that_never_says_ready_is_an_error_not_a_wait() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(120)"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        exc = _in_thread(lambda: bench.wait_ready(proc, 1.0), 30)
    finally:
        bench.stop(proc)
    assert isinstance(exc, bench.ServerGone) and "not ready within 1 s: starting" in str(exc), exc
    assert proc.returncode is not None


def test_the_set_up_computes_every_balance_so_the_check_rows_are_cached_checks() -> None:
    """The check rows are held to the cached check's budget: before, their first call per subject was uncached (with
    one client and a slow server most of a 3 s cell's calls were)."""
    seen: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        stop = threading.Event()
        listener.settimeout(10)

        def accept_one() -> None:
            conn, _ = listener.accept()
            _serve_conn(conn, stop, seen)

        t = threading.Thread(target=accept_one, daemon=True)
        t.start()
        try:
            bench.seed("127.0.0.1", port, 10)
        finally:
            stop.set()
            t.join(5)
    checks = [line for line in seen if line.startswith("GET ") and line.endswith("/entitlements/ai_tokens/value HTTP/1.1")]
    assert checks == [f"GET /api/v1/subjects/customer-{k}/entitlements/ai_tokens/value HTTP/1.1"
                      for k in range(bench.SUBJECTS)], seen[-5:]
    assert seen.index(checks[0]) > max(i for i, line in enumerate(seen) if "/entitlements HTTP" in line)
