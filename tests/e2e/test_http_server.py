"""`billow serve`'s HTTP layer under load and abuse (issue 17 item 4): concurrent clients, Nagle, a connect burst,
malformed framing, stalled requests. Against the real process (chdb, SQLite, in-process bus) except where a test
needs short timeouts: there an in-process BillowServer on the memory usage store."""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billow.bootstrap import Settings
from billow.local.asgi import work_class
from billow.local.server import BillowServer
from tests.conftest import HeldEngineClient, engine_seen, memory_server
from tests.e2e.conftest import Server

CLIENTS = 32
QUERIES = 5
METER = {"slug": "http_tokens", "eventType": "http_prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
         "groupBy": {"model": "$.model"}}


@pytest.fixture(scope="module")
def srv(server: Server) -> Server:
    status, _, _ = server.request("POST", "/api/v1/meters", METER)
    assert status == 201
    events = [{"specversion": "1.0", "id": f"h{i}", "source": "t", "type": "http_prompt", "subject": f"c{i % CLIENTS}",
               "time": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", "data": {"tokens": str(i % 100),
                                                                                 "model": f"m{i % 4}"}}
              for i in range(2000)]
    status, _, _ = server.request("POST", "/api/v1/events", raw=json.dumps(events).encode(),
                                  content_type="application/cloudevents-batch+json")
    assert status == 204
    return server


def _exchange(port: int, data: bytes, wait_s: float) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes (or `wait_s` passes): what came back and when it ended."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out, time.monotonic() - t0


def _status_and_problem(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/problem+json" in head.lower(), head
    return status, json.loads(body)


def test_small_responses_do_not_wait_for_a_delayed_ack(srv: Server) -> None:
    """20 sequential requests on one keep-alive connection: the http.server host sent head and body as two writes
    with Nagle on, so each waited ~40 ms for the client's delayed ACK (>= 0.8 s for 20)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", "/healthz")
    conn.getresponse().read()  # connected, warm
    took = []
    for _ in range(20):
        t0 = time.perf_counter()
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert r.status == 200 and r.read()
        took.append(time.perf_counter() - t0)
    conn.close()
    assert statistics.median(took) < 0.030 and sum(took) < 0.5, [round(t * 1000, 1) for t in took]


def test_32_concurrent_query_clients_are_served_side_by_side(srv: Server) -> None:
    """32 clients, each on its own keep-alive connection, each running 5 meter queries, all started at once: every
    query answers 200, and no client is starved (the slowest client's total within 3x the median client's)."""
    start = threading.Barrier(CLIENTS)
    totals: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
            start.wait()
            t0 = time.perf_counter()
            for i in range(QUERIES):
                conn.request("GET", f"/api/v1/meters/http_tokens/query?windowSize=HOUR&groupBy=model&subject=c{(k + i) % CLIENTS}")
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or not json.loads(body)["data"]:
                    raise AssertionError(f"{r.status} {body[:200]!r}")
            with lock:
                totals.append(time.perf_counter() - t0)
            conn.close()
        except Exception as exc:  # noqa: BLE001 (reported below)
            with lock:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    wall = time.perf_counter() - t0
    assert not failures and len(totals) == CLIENTS, failures[:3]
    assert max(totals) <= 3 * statistics.median(totals) + 0.5, (sorted(round(t, 2) for t in totals), wall)


def test_a_burst_of_64_simultaneous_connects_all_complete(srv: Server) -> None:
    """The http.server host listened with a backlog of 5: a burst of connects overflowed it (retransmitted SYNs,
    resets). All 64 connect at once and each gets its answer."""
    start = threading.Barrier(64)
    answers: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            start.wait()
            t0 = time.monotonic()
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            connected = time.monotonic() - t0
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            conn.sock = s
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            conn.close()
            with lock:
                answers.append(r.status)
                if connected > 0.9:  # a lost SYN is retransmitted after 1 s
                    failures.append(f"connect took {connected:.2f} s")
        except Exception as exc:  # noqa: BLE001 (reported below)
            with lock:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures and answers == [200] * 64, (failures[:5], len(answers))


@pytest.mark.parametrize("coding", ["gzip, chunked", "chunked, identity", "identity", "chunked\x0b"])
def test_a_transfer_coding_other_than_chunked_is_refused(srv: Server, coding: str) -> None:
    """A Transfer-Encoding other than exactly `chunked` used to be ignored (the body then framed by Content-Length
    or nothing): a request-smuggling risk behind a proxy that reads it the other way. Refused, never routed."""
    body = b'[{"specversion":"1.0","id":"te1","source":"t","type":"http_prompt","subject":"c1"}]'
    raw, _ = _exchange(srv.port, b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: " + coding.encode("latin-1") + b"\r\n\r\n"
                       + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n", wait_s=10)
    status, prob = _status_and_problem(raw)
    assert status in (400, 501) and prob["status"] == status, raw
    assert raw.count(b"HTTP/1.1 ") == 1  # one answer, then the connection is closed
    assert srv.request("GET", "/api/v1/events?id=te1")[2] == []  # nothing of it was ingested


def test_a_negative_content_length_is_answered_at_once(srv: Server) -> None:
    raw, took = _exchange(srv.port, b"POST /api/v1/meters HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                          wait_s=10)
    status, prob = _status_and_problem(raw)
    assert status == 400 and "Content-Length" in str(prob["detail"]) and took < 5, (raw, took)


def test_a_chunked_body_is_read(srv: Server) -> None:
    doc = json.dumps([{"key": "chunky"}]).encode()
    raw, _ = _exchange(srv.port, b"POST /api/v1/subjects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                       + f"{len(doc[:5]):x}\r\n".encode() + doc[:5] + b"\r\n"
                       + f"{len(doc[5:]):x}\r\n".encode() + doc[5:] + b"\r\n0\r\n\r\n", wait_s=30)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]
    assert srv.request("GET", "/api/v1/subjects/chunky")[0] == 200


# -- timeouts: an in-process server with short ones -------------------------------------------------------
@pytest.fixture
def quick(tmp_path: Path) -> Iterator[BillowServer]:
    with memory_server(tmp_path, header_timeout_s=1.0, read_timeout_s=1.0, keepalive_s=1, max_connections=8) as server:
        yield server


def test_a_truncated_body_is_answered_408_within_the_read_timeout(quick: BillowServer) -> None:
    """Content-Length says 100, 3 bytes come, then nothing: http.server's thread waited forever."""
    raw, took = _exchange(quick.address[1], b"POST /api/v1/meters HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: 100\r\n\r\n{\"a", wait_s=20)
    status, prob = _status_and_problem(raw)
    assert status == 408 and prob["instance"] == "/api/v1/meters" and took < 10, (raw, took)


def test_headers_that_never_end_are_dropped_within_the_header_timeout(quick: BillowServer) -> None:
    raw, took = _exchange(quick.address[1], b"GET /api/v1/meters HTTP/1.1\r\nHost: x\r\nX-Slow: 1", wait_s=20)
    status, prob = _status_and_problem(raw)
    assert status == 408 and took < 10, (raw, took)
    raw, took = _exchange(quick.address[1], b"", wait_s=20)  # connects, says nothing
    assert raw == b"" and took < 10


def test_an_idle_keep_alive_connection_is_closed(quick: BillowServer) -> None:
    raw, took = _exchange(quick.address[1], b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=20)
    assert raw.startswith(b"HTTP/1.1 200") and took < 10, (raw, took)


def test_connections_over_the_cap_get_503_and_the_rest_are_served(tmp_path: Path) -> None:
    with memory_server(tmp_path, max_connections=8) as capped:
        port = capped.address[1]
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        try:
            raw, _ = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=10)
            status, prob = _status_and_problem(raw)
            assert status == 503 and "at most 8" in str(prob["detail"]), raw
            held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert held[0].recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            for s in held:
                s.close()


def test_heads_over_the_size_limit_are_problems(quick: BillowServer) -> None:
    port = quick.address[1]
    raw, _ = _exchange(port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=10)
    assert _status_and_problem(raw)[0] == 414, raw[:300]
    raw, _ = _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", wait_s=10)
    assert _status_and_problem(raw)[0] == 431, raw[:300]


def test_a_head_that_keeps_coming_past_the_size_limit_is_refused_before_the_header_timeout(quick: BillowServer) -> None:
    """llhttp itself has no limit on a head: one sent in pieces, never ending, would be buffered until the header
    timeout. The protocol counts it: past the limit, 431 (a header) or 414 (the target), at once."""
    port = quick.address[1]
    for start, status in ((b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", 431), (b"GET /", 414)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            t0 = time.monotonic()
            s.sendall(start)
            out = b""
            try:
                for _ in range(20):  # 20 x 8 KB, a piece every 20 ms: 160 KB, well past the 64 KB limit
                    time.sleep(0.02)
                    s.sendall(b"a" * 8192)
            except OSError:  # the server answered and closed while we were still sending
                pass
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except (TimeoutError, ConnectionResetError):
                pass
        assert _status_and_problem(out)[0] == status and time.monotonic() - t0 < 0.9, (out[:200], start)


def test_answers_keep_the_header_names_the_handlers_gave(quick: BillowServer) -> None:
    """Header names are case-insensitive, but clients that read them from a dict look for `Content-Type`."""
    raw, _ = _exchange(quick.address[1], b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait_s=10)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head and b"\r\nContent-Length: 15\r\n" in head, head
    assert json.loads(body) == {"status": "ok"}


def test_a_204_answer_has_no_content_length(quick: BillowServer) -> None:
    """RFC 9110 8.6: a server MUST NOT send Content-Length in a 204. The next request on the connection is served."""
    raw, _ = _exchange(quick.address[1], b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: "
                       b"application/cloudevents-batch+json\r\nContent-Length: 2\r\n\r\n[]"
                       b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait_s=10)
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 204") and b"content-length" not in first.lower(), raw
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b'{"status":"ok"}'), raw


def test_an_upgrade_request_is_answered_as_http_and_the_connection_closed(quick: BillowServer) -> None:
    """No protocol upgrade is served: the request is answered as plain HTTP, and what follows it on the connection
    (the other protocol's bytes, for the client) is not parsed as requests."""
    raw, took = _exchange(quick.address[1], b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                          b"Upgrade: websocket\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=10)
    assert raw.startswith(b"HTTP/1.1 200") and raw.count(b"HTTP/1.1 ") == 1 and took < 5, (raw, took)


# -- classes of work: ingest, meter queries and entitlement checks each have their own workers ----------------------
def _call(port: int, method: str, path: str, doc: object = None, ctype: str = "application/json",
          timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = json.dumps(doc).encode() if doc is not None else None
        conn.request(method, path, body, {"Content-Type": ctype} if body is not None else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize(("method", "path", "cls"), [
    ("POST", "/api/v1/events", "ingest"), ("POST", "/api/v1/events/", "ingest"),
    ("GET", "/api/v1/subjects/acme/entitlements/ai_tokens/value", "check"),
    ("GET", "/api/v1/customers/c1/entitlements/ai_tokens/value", "check"),
    ("GET", "/api/v2/customers/c1/entitlements/ai_tokens/value", "check"),
    ("GET", "/api/v1/customers/c1/access", "check"), ("GET", "/api/v1/portal/entitlements", "check"),
    ("GET", "/api/v1/meters/tokens/query", "query"), ("POST", "/api/v1/meters/tokens/query", "query"),
    ("GET", "/api/v1/portal/meters/tokens/query", "query"), ("GET", "/api/v1/meters/tokens/subjects", "query"),
    ("GET", "/api/v1/meters/tokens/group-by/model/values", "query"), ("GET", "/api/v1/events", "query"),
    ("GET", "/api/v2/events", "query"), ("GET", "/api/v1/meters/tokens", "api"), ("POST", "/api/v1/meters", "api"),
    ("POST", "/api/v1/meters/tokens/subjects", "api"),
    ("POST", "/api/v1/subjects/acme/entitlements/ai_tokens/reset", "api"),
    ("GET", "/api/v1/subjects/acme/entitlements/ai_tokens/history", "api"), ("GET", "/healthz", "api")])
def test_each_request_is_served_by_the_workers_of_its_class(method: str, path: str, cls: str) -> None:
    assert work_class(method, path) == cls


def test_stuck_meter_queries_starve_neither_checks_nor_ingest(tmp_path: Path) -> None:
    """Twelve meter queries stuck in the usage store (more than there are workers) hold every query worker: a cached
    entitlement check still answers at once, and so do an ingest batch and the rest of the API (a meter's read).
    Before, queries and checks shared one pool of four workers, so the check waited behind the stuck queries (issue 17
    item 4: checks starved in the mix); later the API's other requests still did."""
    with memory_server(tmp_path) as server:
        port = server.address[1]
        release = threading.Event()
        stuck = threading.Semaphore(0)
        usage = server.container.usage
        aggregate = usage.aggregate

        def blocking(q: object) -> object:
            stuck.release()
            assert release.wait(60)
            return aggregate(q)  # type: ignore[arg-type]

        try:
            assert _call(port, "POST", "/api/v1/meters", METER)[0] == 201
            assert _call(port, "POST", "/api/v1/features", {"key": "lane", "name": "lane",
                                                            "meterSlug": "http_tokens"})[0] == 201
            assert _call(port, "POST", "/api/v1/subjects", [{"key": "lane-1"}])[0] == 200
            status, raw = _call(port, "POST", "/api/v1/subjects/lane-1/entitlements", {
                "type": "metered", "featureKey": "lane", "issueAfterReset": 100,
                "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})
            assert status == 201, raw
            check = "/api/v1/subjects/lane-1/entitlements/lane/value"
            assert _call(port, "GET", check)[0] == 200  # computed once: cached from now on
            usage.aggregate = blocking  # type: ignore[method-assign]
            queries = [threading.Thread(target=_call, args=(port, "GET", "/api/v1/meters/http_tokens/query"),
                                        kwargs={"timeout": 90}, daemon=True) for _ in range(12)]
            for t in queries:
                t.start()
            for _ in range(4):  # every worker the queries may have is stuck
                assert stuck.acquire(timeout=30)
            t0 = time.perf_counter()
            status, raw = _call(port, "GET", check, timeout=10)
            took_check = time.perf_counter() - t0
            assert status == 200 and json.loads(raw)["hasAccess"] is True, raw
            event = {"specversion": "1.0", "id": "lane-e1", "source": "t", "type": "http_prompt", "subject": "lane-2",
                     "data": {"tokens": "1", "model": "m"}}
            t0 = time.perf_counter()
            assert _call(port, "POST", "/api/v1/events", event, "application/cloudevents+json", timeout=10)[0] == 204
            took_ingest = time.perf_counter() - t0
            t0 = time.perf_counter()
            status, raw = _call(port, "GET", "/api/v1/meters/http_tokens", timeout=10)
            took_api = time.perf_counter() - t0
            assert status == 200 and json.loads(raw)["slug"] == "http_tokens", raw
            assert took_check < 2 and took_ingest < 2 and took_api < 2, (took_check, took_ingest, took_api)
        finally:
            release.set()
            usage.aggregate = aggregate  # type: ignore[method-assign]


def test_while_serving_the_gil_is_handed_over_every_millisecond(tmp_path: Path) -> None:
    """CPython hands the GIL to a waiting thread after 5 ms by default: a check (event loop -> check worker -> event
    loop) behind an ingest batch's Python stretches waited up to that at each hand-over. billow serve asks for 1 ms
    while it serves (mixo x 16 on this machine, 3 runs each: checks 1,088-1,170 -> 1,120-1,291 req/s, p99 60-76 ->
    45-57 ms, ingest alike) and gives the process its own setting back when it stops."""
    import sys

    before = sys.getswitchinterval()
    with memory_server(tmp_path) as server:
        assert _call(server.address[1], "GET", "/healthz")[0] == 200
        assert sys.getswitchinterval() == pytest.approx(0.001)
    assert server.serving is not None
    server.serving.join(10)
    assert not server.serving.is_alive() and sys.getswitchinterval() == before


def test_the_embedded_engine_runs_one_query_fewer_than_the_cpus_and_checks_answer_meanwhile(tmp_path: Path) -> None:
    """Issue 17 item 4 (bench.serve_concurrency mixq: cached checks kept 21-35 % of their rate beside meter queries on
    2 CPUs). A usage query is mostly chdb's native work, which the OS shares with the one thread that runs Python at a
    time; billow serve on chdb now lets the engine run one query fewer than the CPUs at once (one on 2 CPUs), the
    others waiting their turn. Six meter queries asked together over HTTP, held at their start in the engine: no more
    than that many run (before: all four query workers'), a cached check and a meter's read answer meanwhile, and once
    let go every query answers the exact sums. In a process of its own: chdb opens one data path per process."""
    run = subprocess.run([sys.executable, "-c", "from tests.e2e.test_http_server import _engine_turns_phase; "
                          f"_engine_turns_phase({str(tmp_path)!r})"], capture_output=True, text=True,
                         cwd=Path(__file__).parents[2], timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["running"] == seen["allowed"] == min(seen["engine_queries"], 4), seen  # 4 query workers ask at most
    assert seen["check"] == [200, True] and seen["meter"] == 200 and seen["took_s"] < 2, seen
    assert seen["running_after"] == seen["allowed"], seen  # the held queries were still running meanwhile
    assert seen["statuses"] == [200] * 6, seen
    assert [Decimal(v) for v in seen["sums"]] == [Decimal(seen["total"])] * 6, seen


def _engine_turns_phase(data_dir: str) -> None:
    """The scenario of the test above, in this process: prints what it saw as JSON."""
    from billow.bootstrap import engine_queries

    server = BillowServer(Settings.parse({"data_dir": data_dir, "billing_every_s": 0}), port=0)
    server.start_background()
    port = server.address[1]
    store = server.container.usage._real()  # type: ignore[attr-defined]
    seen = engine_seen()
    open_reader = store._reader
    store._reader = lambda: HeldEngineClient(open_reader(), seen)
    seen["go"].set()
    answers: list[tuple[int, bytes]] = []
    out: dict[str, Any] = {"engine_queries": engine_queries(), "allowed": min(engine_queries(), 4)}
    try:
        assert _call(port, "POST", "/api/v1/meters", METER)[0] == 201
        events = [{"specversion": "1.0", "id": f"k{i}", "source": "t", "type": "http_prompt", "subject": f"k{i % 3}",
                   "time": f"2026-11-02T{i % 24:02d}:00:00Z", "data": {"tokens": f"{i}.5", "model": "m"}}
                  for i in range(60)]
        assert _call(port, "POST", "/api/v1/events", events, "application/cloudevents-batch+json")[0] == 204
        assert _call(port, "POST", "/api/v1/features", {"key": "lane", "name": "lane",
                                                        "meterSlug": "http_tokens"})[0] == 201
        assert _call(port, "POST", "/api/v1/subjects", [{"key": "k1"}])[0] == 200
        assert _call(port, "POST", "/api/v1/subjects/k1/entitlements", {
            "type": "metered", "featureKey": "lane", "issueAfterReset": 100000,
            "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})[0] == 201
        check = "/api/v1/subjects/k1/entitlements/lane/value"
        assert _call(port, "GET", check)[0] == 200  # computed once: cached from now on
        seen["go"].clear()
        query = "/api/v1/meters/http_tokens/query?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"
        lock = threading.Lock()

        def ask() -> None:
            got = _call(port, "GET", query, timeout=90)
            with lock:
                answers.append(got)

        queries = [threading.Thread(target=ask, daemon=True) for _ in range(6)]
        for th in queries:
            th.start()
        deadline = time.monotonic() + 30
        while seen["running"] < out["allowed"] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # the other queries have had time to reach the engine, were they let in
        out["running"] = seen["running"]
        t0 = time.perf_counter()
        status, raw = _call(port, "GET", check, timeout=10)
        out["check"] = [status, json.loads(raw).get("hasAccess")]
        out["meter"] = _call(port, "GET", "/api/v1/meters/http_tokens", timeout=10)[0]
        out["took_s"] = time.perf_counter() - t0
        out["running_after"] = seen["running"]
        seen["go"].set()
        for th in queries:
            th.join(60)
        out["total"] = str(sum(Decimal(f"{i}.5") for i in range(60)))
        out["statuses"] = [s for s, _ in answers]
        out["sums"] = [str(sum(Decimal(str(r["value"])) for r in json.loads(b)["data"])) for _, b in answers]
    finally:
        seen["go"].set()
        server.shutdown()
    print(json.dumps(out))


def test_served_on_asyncios_loop_where_uvloop_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop has no Windows build: there `billow serve` runs on asyncio's own loop, with the same protocol, workers
    and refusals. Requests pipelined on one connection are answered in order, a request with a body is served, and a
    malformed one after them is refused with problem+json."""
    import asyncio

    from billow.local import server as server_module

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert server_module._loop_factory() is asyncio.new_event_loop
    with memory_server(tmp_path) as server:
        port = server.address[1]
        assert _call(port, "POST", "/api/v1/subjects", [{"key": "win-1"}])[0] == 200
        get = b"GET /api/v1/subjects/win-1 HTTP/1.1\r\nHost: x\r\n\r\n"
        raw, _ = _exchange(port, get * 3 + b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 5)
        answers = raw.split(b"HTTP/1.1 ")[1:]
        assert [a[:3] for a in answers] == [b"200", b"200", b"200", b"400"], raw[:600]
        assert all(b'"key":"win-1"' in a for a in answers[:3])
        status, problem = _status_and_problem(b"HTTP/1.1 " + answers[3])
        assert status == 400 and problem["status"] == 400
