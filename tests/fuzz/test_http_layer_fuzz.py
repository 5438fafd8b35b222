"""`billow serve`'s HTTP layer (BillowHttpProtocol: uvicorn's httptools protocol, llhttp, on uvloop) under a seeded
mutation fuzz, from outside over raw TCP. A handful of valid requests (GET /healthz, POST /api/v1/subjects, a
CloudEvents batch, a chunked POST, two or three of them pipelined) have their bytes mutated (bytes flipped, inserted, deleted in
the head; CRLFs doubled, dropped or made bare; NUL, CR, LF, space, tab, high bytes inserted; headers repeated;
Content-Length moved up or down; chunk sizes corrupted; the stream cut short), are sent in random pieces with tiny
pauses, and whatever comes back must hold, for every input:

- the server closes the connection within the header/read timeout (+ a margin) of the last byte sent: nothing hangs;
- every answer is an HTTP/1.1 status line, headers and exactly Content-Length body bytes (a 204: no body and no
  Content-Length), and nothing else follows;
- every 4xx/5xx is application/problem+json whose `status` is the HTTP status; no 5xx but 503/505 (a 500 is a crash);
- an answer that closes the connection (a refusal) is the last: nothing is answered after it;
- the requests the mutations left whole (ending before the first changed byte) are answered first, each in its
  place, with what it gets unmutated;
- a subject POSTed by a request that was refused (or never answered) is not stored; an unmutated one is;
- after every case a fresh GET /healthz is served, nothing was logged at ERROR (an exception in a protocol
  callback is logged by the loop, not answered), and the server's thread is alive at the end.

One in-process BillowServer on the memory usage store for the module, with short timeouts. Cases run a few at a time
(most of a case's time is waiting for the server to close an idle connection). BILLOW_HTTP_FUZZ_SEED picks another
seed, BILLOW_HTTP_FUZZ_CASES the number of cases; each case's input depends only on the seed and its number, and a
failure names both with the bytes sent."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from billow.local.server import BillowServer
from tests.conftest import memory_server, raw_read, raw_send

SEED = int(os.environ.get("BILLOW_HTTP_FUZZ_SEED", "20261206"))  # another seed explores further
CASES = int(os.environ.get("BILLOW_HTTP_FUZZ_CASES", "800"))
WORKERS = 12  # cases in flight at once
HEADER_TIMEOUT_S = 1.5
READ_TIMEOUT_S = 1.5
MARGIN_S = 2.0  # a shared 2-core machine: the server's loop may be late by this much
BOUND_S = max(HEADER_TIMEOUT_S, READ_TIMEOUT_S) + MARGIN_S  # from the last byte sent to the server's close
ALLOWED_5XX = (503, 505)
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\t !-~\x80-\xff]*")


# -- the requests ---------------------------------------------------------------------------------------------------
@dataclass
class Request:
    raw: bytes
    key: str | None = None  # the subject key a POST /api/v1/subjects stores


@dataclass
class Case:
    number: int
    template: str
    requests: list[Request]
    mutations: list[str] = field(default_factory=list)
    data: bytes = b""
    pieces: list[tuple[bytes, float]] = field(default_factory=list)  # (bytes, pause after them)

    def describe(self) -> str:
        return (f"case {self.number} (seed {SEED}, {self.template}, mutations {self.mutations}):\n"
                f"  sent {self.data!r}\n  in pieces {[len(p) for p, _ in self.pieces]}")


def _head(line: str, headers: list[str], close: bool) -> bytes:
    return (line + "\r\n" + "".join(h + "\r\n" for h in [*headers, *(["Connection: close"] if close else [])])
            + "\r\n").encode()


def _healthz(rng: random.Random, close: bool, key: str) -> Request:
    return Request(_head("GET /healthz HTTP/1.1", ["Host: x", "Accept: */*"], close))


def _subjects(rng: random.Random, close: bool, key: str) -> Request:
    doc = json.dumps([{"key": key, "displayName": "Fuzz " + key}]).encode()
    return Request(_head("POST /api/v1/subjects HTTP/1.1", ["Host: x", "Content-Type: application/json",
                                                           f"Content-Length: {len(doc)}"], close) + doc, key)


def _events(rng: random.Random, close: bool, key: str) -> Request:
    batch = [{"specversion": "1.0", "id": f"{key}-{i}", "source": "fuzz", "type": "fuzz_request", "subject": key,
              "time": "2026-12-01T00:00:00Z", "data": {"tokens": str(rng.randint(1, 99))}}
             for i in range(rng.randint(1, 3))]
    doc = json.dumps(batch).encode()
    return Request(_head("POST /api/v1/events HTTP/1.1", ["Host: x", "Content-Type: application/cloudevents-batch+json",
                                                         f"Content-Length: {len(doc)}"], close) + doc)


def _chunked(rng: random.Random, close: bool, key: str) -> Request:
    doc = json.dumps([{"key": key}]).encode()
    cuts = sorted(rng.sample(range(1, len(doc)), rng.randint(1, 3)))
    body = b""
    for a, b in zip([0, *cuts], [*cuts, len(doc)], strict=True):
        ext = b";x=1" if rng.random() < 0.2 else b""
        body += f"{b - a:x}".encode() + ext + b"\r\n" + doc[a:b] + b"\r\n"
    body += b"0\r\n\r\n"
    return Request(_head("POST /api/v1/subjects HTTP/1.1", ["Host: x", "Content-Type: application/json",
                                                           "Transfer-Encoding: chunked"], close) + body, key)


SINGLES: dict[str, Callable[[random.Random, bool, str], Request]] = {
    "healthz": _healthz, "subjects": _subjects, "events": _events, "chunked": _chunked}


def make_case(number: int) -> Case:
    rng = random.Random(f"{SEED}:{number}")
    close = rng.random() < 0.75  # most end with Connection: close (else the server closes the idle connection)
    if rng.random() < 0.3:  # two or three pipelined: a request can wait its turn behind one in flight
        names = [rng.choice(list(SINGLES)) for _ in range(rng.choice((2, 3)))]
        reqs = [SINGLES[n](rng, close and i == len(names) - 1, f"hf{SEED}-{number}{'abc'[i]}")
                for i, n in enumerate(names)]
        case = Case(number, "pipelined " + "+".join(names), reqs)
    else:
        name = rng.choice(list(SINGLES))
        case = Case(number, name, [SINGLES[name](rng, close, f"hf{SEED}-{number}")])
    data = b"".join(r.raw for r in case.requests)
    if rng.random() >= 0.08:  # a few go unmutated: the control that a valid request is served (and stored)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            name = rng.choice(list(MUTATORS))
            data = MUTATORS[name](rng, data)
            case.mutations.append(name)
    case.data = data
    cuts = sorted(set(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 5))))) if len(data) > 1 else []
    case.pieces = [(data[a:b], rng.choice((0.0, 0.0, 0.002, 0.01, 0.03)))
                   for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return case


# -- the mutations ----------------------------------------------------------------------------------------------------
SPECIAL = b"\x00\r\n \t\x7f\x80\xff\xc3:;,\"\\/"


def _in_head(rng: random.Random, data: bytes) -> int:
    """A position, mostly in the first request's head."""
    end = data.find(b"\r\n\r\n")
    if end > 0 and rng.random() < 0.8:
        return rng.randrange(0, end + 4)
    return rng.randrange(0, len(data) + 1)


def _flip(rng: random.Random, data: bytes) -> bytes:
    i = min(_in_head(rng, data), len(data) - 1)
    new = data[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.6 else rng.randrange(256)
    return data[:i] + bytes([new]) + data[i + 1:]


def _insert(rng: random.Random, data: bytes) -> bytes:
    i = _in_head(rng, data)
    return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))) + data[i:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    i = _in_head(rng, data)
    return data[:i] + data[i + rng.randint(1, 4):]


def _special(rng: random.Random, data: bytes) -> bytes:
    i = _in_head(rng, data)
    return data[:i] + bytes([rng.choice(SPECIAL)]) * rng.choice((1, 1, 2)) + data[i:]


def _crlfs(data: bytes) -> list[int]:
    return [m.start() for m in re.finditer(rb"\r\n", data)]


def _double_crlf(rng: random.Random, data: bytes) -> bytes:
    at = _crlfs(data)
    if not at:
        return data
    i = rng.choice(at)
    return data[:i] + b"\r\n" + data[i:]


def _drop_crlf(rng: random.Random, data: bytes) -> bytes:
    at = _crlfs(data)
    if not at:
        return data
    i = rng.choice(at)
    return data[:i] + data[i + 2:]


def _bare_ending(rng: random.Random, data: bytes) -> bytes:
    at = _crlfs(data)
    if not at:
        return data
    i = rng.choice(at)
    return data[:i] + rng.choice((b"\n", b"\r", b"\n\r", b"\r\r\n")) + data[i + 2:]


def _repeat_header(rng: random.Random, data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    first = data.find(b"\r\n")
    if end < 0 or first >= end:
        return data
    lines = data[first + 2:end].split(b"\r\n")
    line = rng.choice(lines)
    if rng.random() < 0.3:  # the same name, another value
        name, _, value = line.partition(b":")
        line = name + b": " + (value.strip()[::-1] or b"y")
    at = first + 2 + sum(len(x) + 2 for x in lines[:rng.randrange(len(lines) + 1)])
    return data[:at] + line + b"\r\n" + data[at:]


def _content_length(rng: random.Random, data: bytes) -> bytes:
    found = list(re.finditer(rb"(?i)content-length: ?(\d+)", data))
    if not found:
        return data
    m = rng.choice(found)
    n = int(m.group(1))
    new = rng.choice((n + 1, n + rng.randint(2, 40), max(0, n - 1), max(0, n - rng.randint(2, 40)), 0, 10 ** 9,
                      10 ** 19, 2 ** 63))
    text = rng.choice((str(new), str(new), f"{n}, {new}", f"0{n}", f"{n} ", f"+{n}", f"-{n}"))
    return data[:m.start(1)] + text.encode() + data[m.end(1):]


def _chunk_size(rng: random.Random, data: bytes) -> bytes:
    found = list(re.finditer(rb"\r\n([0-9a-f]+)(?:;x=1)?\r\n", data))
    if not found:
        return data
    m = rng.choice(found)
    n = int(m.group(1), 16)
    new = rng.choice((f"{n + 1:x}", f"{max(0, n - 1):x}", f"{n + rng.randint(2, 30):x}", "0", f"{n:X}", f"00{n:x}",
                      "zz", f"-{n:x}", f"0x{n:x}", f" {n:x}", f"{n:x} ", "f" * 17, "1" + "0" * 16, f"{n:x};",
                      f"{n:x};a=\"b", ""))
    return data[:m.start(1)] + new.encode() + data[m.end(1):]


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(1, len(data))] if len(data) > 1 else data


def _version(rng: random.Random, data: bytes) -> bytes:
    new = rng.choice((b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.10", b"HTTP/01.1", b"HTTPS/1.1", b"HTTP/1", b"http/1.1",
                      b"HTTP/1.1 ", b"", b"HTTP/1.9", b"HTTP/0.9"))
    return data.replace(b"HTTP/1.1", new, 1)


def _method(rng: random.Random, data: bytes) -> bytes:
    m = re.match(rb"[A-Z]+", data)
    if not m:
        return data
    new = rng.choice((b"get", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PRI", b"G\x00T",
                      b"POSTT", b"", b"\r\nGET", b"QUERY"))
    return new + data[m.end():]


def _target(rng: random.Random, data: bytes) -> bytes:
    m = re.match(rb"[A-Za-z]+ (\S+)", data)
    if not m:
        return data
    t = m.group(1)
    new = rng.choice((t + b"?a=%00", t + b"%", b"*", b"http://x" + t, t + b"#frag", t + b"/../..", b"//" + t,
                      t + b"?" + b"q" * 3000, t.replace(b"/", b"\\"), b"/" + b"a" * 70000))
    return data[:m.start(1)] + new + data[m.end(1):]


def _garbage_after(rng: random.Random, data: bytes) -> bytes:
    return data + rng.choice((b"\r\n", b"\r\n\r\n", b"GET", b"\x00", b"GET /healthz HTTP/1.1\r\n",
                              bytes(rng.randrange(256) for _ in range(8))))


MUTATORS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "flip": _flip, "insert": _insert, "delete": _delete, "special": _special, "double-crlf": _double_crlf,
    "drop-crlf": _drop_crlf, "bare-ending": _bare_ending, "repeat-header": _repeat_header,
    "content-length": _content_length, "chunk-size": _chunk_size, "truncate": _truncate, "version": _version,
    "method": _method, "target": _target, "garbage-after": _garbage_after,
}


# -- talking to the server ------------------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k == name]
        return b",".join(values) if values else None

    def closes(self) -> bool:
        return b"close" in [t.strip().lower() for t in (self.header(b"connection") or b"").split(b",")]


@dataclass
class Exchange:
    received: bytes
    closed: bool  # the server closed (FIN or reset) within BOUND_S of the last byte sent
    closed_after_s: float  # from the last byte sent


def exchange(port: int, pieces: list[tuple[bytes, float]]) -> Exchange:
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_S) as s:
        sent = raw_send(s, pieces)
        buf, closed = raw_read(s, b"", lambda _: sent + BOUND_S)
    return Exchange(buf, closed, time.monotonic() - sent)


def parse(buf: bytes) -> tuple[list[Answer], list[str]]:
    """The answers in `buf`, and what is wrong with their framing (nothing, from a well-formed server)."""
    out: list[Answer] = []
    while buf:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return out, [f"bytes that are not a complete answer: {buf[:300]!r}"]
        lines = buf[:end].split(b"\r\n")
        m = STATUS_LINE.fullmatch(lines[0])
        if not m:
            return out, [f"not an HTTP/1.1 status line: {lines[0]!r}"]
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not TOKEN.fullmatch(name) or b"\r" in value or b"\n" in value:
                return out, [f"malformed answer header {line!r}"]
            headers.append((name.lower(), value.strip(b" \t")))
        status = int(m.group(1))
        lengths = [v for k, v in headers if k == b"content-length"]
        if status < 200:
            if status != 100 or lengths:
                return out, [f"an interim answer other than a bare 100: {buf[:end]!r}"]
            length = 0
        elif status in (204, 304):  # no body; a 204 MUST NOT carry Content-Length (RFC 9110 8.6)
            if lengths:
                return out, [f"a {status} answer with a Content-Length: {buf[:end]!r}"]
            length = 0
        else:
            if len(lengths) != 1 or not lengths[0].isdigit():
                return out, [f"an answer not framed by one Content-Length: {buf[:end]!r}"]
            length = int(lengths[0])
        if len(buf) < end + 4 + length:
            return out, [f"an answer whose body is short of its Content-Length {length}: {buf[:end + 4 + length]!r}"]
        out.append(Answer(status, headers, buf[end + 4:end + 4 + length]))
        buf = buf[end + 4 + length:]
    return out, []


def get(port: int, target: str) -> Answer:
    ex = exchange(port, [(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), 0.0)])
    answers, wrong = parse(ex.received)
    assert not wrong and len(answers) == 1 and ex.closed, (target, ex)
    return answers[0]


def check(port: int, case: Case, seen: list[int] | None = None) -> list[str]:
    """Send the case and check every invariant; what failed (nothing, if all hold). The statuses answered are
    added to `seen`."""
    ex = exchange(port, case.pieces)
    answers, bad = parse(ex.received)
    finals = [a for a in answers if a.status >= 200]
    if seen is not None:
        seen.extend(a.status for a in finals)
    if not ex.closed:
        bad.append(f"the connection was still open {BOUND_S:g} s after the last byte sent (hang)")
    for i, a in enumerate(finals):
        if a.status >= 500 and a.status not in ALLOWED_5XX:
            bad.append(f"answer {i} is a {a.status} (a crash in our code): {a.body[:500]!r}")
        if a.status >= 400:
            ctype = (a.header(b"content-type") or b"").split(b";")[0].strip()
            try:
                doc = json.loads(a.body)
            except ValueError:
                doc = None
            if ctype != b"application/problem+json" or not isinstance(doc, dict) or doc.get("status") != a.status:
                bad.append(f"answer {i} ({a.status}) is not a problem+json whose status is {a.status}: "
                           f"{a.headers} {a.body[:300]!r}")
        if a.closes() and i != len(finals) - 1:
            bad.append(f"answer {i} ({a.status}) closes the connection, yet {len(finals) - 1 - i} more came after it")
    # The control: the requests whose bytes the mutations left whole (all of them, unmutated; else those that end
    # before the first changed byte) are served, each answered in its place, before anything else is answered.
    sent = b"".join(r.raw for r in case.requests)
    same = next((i for i, (x, y) in enumerate(zip(sent, case.data, strict=False)) if x != y),
                min(len(sent), len(case.data)))
    ends = list(itertools.accumulate(len(r.raw) for r in case.requests))
    whole = [r for r, end in zip(case.requests, ends, strict=True) if end <= same]
    want = [204 if r.raw.startswith(b"POST /api/v1/events") else 200 for r in whole]
    got = [a.status for a in finals]
    if got[:len(want)] != want or (not case.mutations and got != want):
        bad.append(f"the {len(whole)} requests left whole were answered {got} (want {want} first)")
    # A subject POSTed by a request at or after a refusal, or never answered, is not stored; an unmutated one is.
    refused_at = next((i for i, a in enumerate(finals) if a.status >= 400 and a.closes()), len(finals))
    for j, req in enumerate(case.requests):
        if req.key is None:
            continue
        if not case.mutations or j >= refused_at:
            found = get(port, f"/api/v1/subjects/{req.key}")
            if found.status not in (200, 404):
                bad.append(f"GET of subject {req.key} answered {found.status}")
            elif (found.status == 200) != (not case.mutations):
                bad.append(f"subject {req.key} of request {j} is {'' if found.status == 200 else 'not '}stored "
                           f"(answers {[a.status for a in finals]})")
    healthz = get(port, "/healthz")
    if healthz.status != 200 or json.loads(healthz.body) != {"status": "ok"}:
        bad.append(f"a fresh GET /healthz after the case answered {healthz.status} {healthz.body!r}")
    if bad:
        bad.insert(0, case.describe() + f"\n  got ({'closed' if ex.closed else 'open'} after "
                   f"{ex.closed_after_s:.2f} s) {ex.received[:1500]!r}")
    return bad


# -- the test ---------------------------------------------------------------------------------------------------------
class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BillowServer]:
    with memory_server(tmp_path_factory.mktemp("httpfuzz"), header_timeout_s=HEADER_TIMEOUT_S,
                       read_timeout_s=READ_TIMEOUT_S, keepalive_s=5) as srv:
        yield srv


def test_mutated_requests_keep_every_invariant(server: BillowServer) -> None:
    port = server.address[1]
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    seen: list[int] = []
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="http-fuzz") as pool:
            results = list(pool.map(lambda n: check(port, make_case(n), seen), range(CASES)))
    finally:
        logging.getLogger().removeHandler(errors)
    took = time.monotonic() - t0
    failures = [r for r in results if r]
    fmt = logging.Formatter()
    logged = [f"{r.name}: {r.getMessage()}\n{fmt.formatException(r.exc_info) if r.exc_info else ''}"
              for r in errors.records]
    assert server.serving is not None and server.serving.is_alive(), "the server's thread died"
    assert not failures, f"{len(failures)} of {CASES} cases failed ({took:.1f} s):\n\n" + "\n\n".join(
        "\n  ".join(f) for f in failures[:10])
    assert not logged, "logged at ERROR while fuzzing:\n" + "\n".join(logged[:10])
    # The inputs reach the answers of every kind: served, refused by the handlers, by llhttp, after a timeout.
    assert {200, 204, 400, 404, 405, 408, 413} <= set(seen), sorted(set(seen))


def test_the_cases_use_every_mutation_and_template() -> None:
    cases = [make_case(n) for n in range(CASES)]
    used = {m for c in cases for m in c.mutations}
    assert used == set(MUTATORS), set(MUTATORS) - used
    assert {c.template.split()[-1].split("+")[-1] for c in cases} >= set(SINGLES)
    assert sum(1 for c in cases if not c.mutations) >= 5


@pytest.mark.parametrize("first", ["subjects", "healthz"])
@pytest.mark.parametrize("bad", [b"zz\r\n", b"5\r\nxxxxxxxxx\r\n"], ids=["chunk size not hex", "chunk overruns"])
def test_a_bad_chunked_body_pipelined_behind_a_request_is_refused_after_its_answer(server: BillowServer, first: str,
                                                                                 bad: bytes) -> None:
    """What the fuzz found (seed 20261206, case 159): a chunked body llhttp refuses, in a request pipelined behind one
    being served, was answered 400 at once and the connection closed, while the first request still ran (its subject
    stored) and its answer was dropped: a client reads the 400 as the first request's answer. The first is answered,
    then the second refused, in order."""
    port = server.address[1]
    key = f"hf-pipe-{first}-{len(bad)}"
    req = SINGLES[first](random.Random(0), False, key)
    head = b"POST /api/v1/subjects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    # (the requests as they were before the mutation, as the fuzz keeps them; the second's body is what is mutated)
    case = Case(0, "pipelined", [req, Request(head + b"2\r\n[]\r\n0\r\n\r\n")], mutations=["bad chunked body"])
    case.data = req.raw + head + bad
    case.pieces = [(case.data, 0.0)]
    ex = exchange(port, case.pieces)
    answers, wrong = parse(ex.received)
    assert not wrong and ex.closed, ex
    assert [a.status for a in answers] == [200, 400], ex
    assert not answers[0].closes() and answers[1].closes(), ex
    if first == "subjects":
        assert [s["key"] for s in json.loads(answers[0].body)] == [key], ex
    assert not check(port, case)
