"""`billow serve`'s HTTP/1.1 framing, probed from outside over raw TCP: what a paying client and a proxy in front of
Billow rely on, whichever parser reads the bytes (h11 today). RFC 9112, and a billing API's rules: a request whose
framing two parsers could read differently is never routed, nothing makes the server hang, and every answer the
server makes itself (not a handler's) is one problem+json answer whose `status` is the HTTP status, after which the
connection is closed. After every test a fresh request on a new connection must still be served.

One in-process BillowServer on the memory usage store for the module (short timeouts, so "at once" is told from
"after a timeout"); test_http_server.py covers load, other transfer codings, a negative Content-Length, plain
chunked bodies, the timeouts themselves and the size limits."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import memory_server, raw_read, raw_send

HEADER_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 2.0
AT_ONCE_S = 1.0  # a refusal comes well before either timeout
LINGER_S = 0.3  # after the answers looked for: how long to wait for anything more, or the close


@dataclass
class Answer:
    version: str
    status: int
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Talk:
    answers: list[Answer]  # final answers (status >= 200), in order
    interim: list[Answer]  # 1xx
    rest: bytes  # what came after the last complete answer (nothing, from a well-formed server)
    closed: bool  # the server closed the connection (FIN or reset)
    answered_s: float | None  # from the last byte sent to the arrival of the answers looked for


def _parse(buf: bytes) -> tuple[list[Answer], bytes]:
    """Complete responses at the start of `buf` (framed by Content-Length, as Billow frames all of them), and the
    rest."""
    out: list[Answer] = []
    while (end := buf.find(b"\r\n\r\n")) >= 0:
        lines = buf[:end].decode("latin-1").split("\r\n")
        version, status, _reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), f"malformed answer header {line!r} in {buf[:end]!r}"
            headers.append((name.lower(), value.strip()))
        code = int(status)
        length = 0
        if code >= 200 and code not in (204, 304):
            lengths = [v for k, v in headers if k == "content-length"]
            assert len(lengths) == 1 and lengths[0].isdigit(), f"answer not framed by one Content-Length: {buf!r}"
            length = int(lengths[0])
        if len(buf) < end + 4 + length:
            break
        out.append(Answer(version, code, headers, buf[end + 4:end + 4 + length]))
        buf = buf[end + 4 + length:]
    return out, buf


def _talk(port: int, *parts: bytes, pause_s: float = 0.0, answers: int = 1, wait_s: float = 4.0) -> Talk:
    """One connection: send `parts` (with `pause_s` between them), read until `answers` final answers came (then
    LINGER_S more), the server closed, or `wait_s` passed."""
    answered: float | None = None
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        sent = raw_send(s, [(part, pause_s if i < len(parts) - 1 else 0.0) for i, part in enumerate(parts)])
        deadline = sent + wait_s

        def until(buf: bytes) -> float:  # the answers looked for are in: LINGER_S more for anything after them
            nonlocal answered, deadline
            if answered is None and len([a for a in _parse(buf)[0] if a.status >= 200]) >= answers:
                answered = time.monotonic() - sent
                deadline = min(deadline, time.monotonic() + LINGER_S)
            return deadline

        buf, closed = raw_read(s, b"", until)
    got, rest = _parse(buf)
    if answered is None and len([a for a in got if a.status >= 200]) >= answers:
        answered = time.monotonic() - sent
    return Talk([a for a in got if a.status >= 200], [a for a in got if a.status < 200], rest, closed, answered)


def _refused(talk: Talk, statuses: tuple[int, ...] = (400,)) -> dict[str, Any]:
    """The server's own refusal: exactly one answer, at once, problem+json whose `status` is the HTTP status,
    `Connection: close`, then the connection closed with nothing more."""
    assert len(talk.answers) == 1 and not talk.interim, talk
    a = talk.answers[0]
    assert a.status in statuses, talk
    assert a.version == "HTTP/1.1", talk
    assert a.header("content-type") == "application/problem+json", talk
    prob = a.json()
    assert isinstance(prob, dict) and prob["status"] == a.status, talk
    assert a.header("connection") == "close" and talk.closed and talk.rest == b"", talk
    assert talk.answered_s is not None and talk.answered_s < AT_ONCE_S, talk
    return prob


def _served_healthz(a: Answer) -> None:
    assert a.status == 200 and a.json() == {"status": "ok"}, a


_keys = itertools.count()


def _fresh(name: str) -> str:
    """A subject key no other probe uses (the server lives for the module): what a probe finds stored is its own."""
    return f"fr-{name}-{next(_keys)}"


def _subjects(key: str) -> bytes:
    return json.dumps([{"key": key}]).encode()


def _post(doc: bytes, *headers: str, version: str = "HTTP/1.1") -> bytes:
    """A POST of subjects with the given framing headers (none added), Host included."""
    head = f"POST /api/v1/subjects {version}\r\nHost: x\r\nContent-Type: application/json\r\n"
    return (head + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1") + doc


def _chunked(doc: bytes) -> bytes:
    return f"{len(doc[:7]):x}\r\n".encode() + doc[:7] + b"\r\n" + f"{len(doc[7:]):x}\r\n".encode() + doc[7:] \
        + b"\r\n0\r\n\r\n"


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with memory_server(tmp_path_factory.mktemp("framing"), header_timeout_s=HEADER_TIMEOUT_S,
                       read_timeout_s=READ_TIMEOUT_S, keepalive_s=5) as server:
        yield server.address[1]


@pytest.fixture(autouse=True)
def survives(port: int) -> Iterator[None]:
    """After whatever a test sent, a fresh request on a new connection is served."""
    yield
    talk = _talk(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert len(talk.answers) == 1, talk
    _served_healthz(talk.answers[0])


def _stored(port: int, key: str) -> bool:
    talk = _talk(port, f"GET /api/v1/subjects/{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert len(talk.answers) == 1 and talk.answers[0].status in (200, 404), talk
    return talk.answers[0].status == 200


# -- pipelining, bodies in pieces -----------------------------------------------------------------------------------
def test_three_pipelined_requests_in_one_write_are_answered_in_order(port: int) -> None:
    key = _fresh("pipe")
    doc = _subjects(key)
    talk = _talk(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                 + _post(doc, f"Content-Length: {len(doc)}")
                 + f"GET /api/v1/subjects/{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), answers=3)
    assert [a.status for a in talk.answers] == [200, 200, 200] and talk.rest == b"", talk
    _served_healthz(talk.answers[0])
    assert [s["key"] for s in talk.answers[1].json()] == [key], talk
    assert talk.answers[2].json()["key"] == key, talk
    assert talk.answers[0].header("connection") is None and talk.answers[1].header("connection") is None, talk
    assert talk.answers[2].header("connection") == "close" and talk.closed, talk


def test_a_hundred_pipelined_requests_are_answered_in_order(port: int) -> None:
    """What a client that pipelines (or a proxy multiplexing onto one upstream connection) relies on: each answer
    is the answer to the request in its place."""
    asks = b"".join(f"GET /api/v1/subjects/fr-absent-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(100))
    talk = _talk(port, asks + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", answers=101)
    assert len(talk.answers) == 101 and talk.rest == b"" and talk.closed, (len(talk.answers), talk.rest[:200])
    assert [a.status for a in talk.answers[:100]] == [404] * 100
    assert [a.json()["instance"] for a in talk.answers[:100]] == [f"/api/v1/subjects/fr-absent-{i}" for i in range(100)]
    _served_healthz(talk.answers[100])


def test_a_handler_error_leaves_the_connection_usable(port: int) -> None:
    """A handler's 400 (a body that is not JSON) is an answer like any other: its body was read whole, the connection
    stays open, the request pipelined after it is answered."""
    bad = b'[{"key": '
    talk = _talk(port, _post(bad, f"Content-Length: {len(bad)}")
                 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", answers=2)
    assert [a.status for a in talk.answers] == [400, 200] and talk.rest == b"" and talk.closed, talk
    assert talk.answers[0].header("connection") is None, talk
    assert talk.answers[0].header("content-type") == "application/problem+json", talk
    _served_healthz(talk.answers[1])


def test_a_request_split_across_writes_with_pauses_is_read_whole(port: int) -> None:
    """Request line, headers and body each cut mid-token, 0.2 s between the pieces (within both timeouts)."""
    key = _fresh("pieces")
    doc = _subjects(key)
    whole = _post(doc, f"Content-Length: {len(doc)}", "Connection: close")
    head_end = whole.index(b"\r\n\r\n") + 4
    cuts = [9, 30, head_end - 3, head_end, head_end + 5, head_end + 12, len(whole)]
    parts = [whole[a:b] for a, b in zip([0, *cuts], cuts, strict=False)]
    talk = _talk(port, *parts, pause_s=0.2)
    assert len(talk.answers) == 1 and talk.answers[0].status == 200, talk
    assert [s["key"] for s in talk.answers[0].json()] == [key], talk
    assert _stored(port, key)


def test_after_a_malformed_request_the_pipelined_rest_is_never_answered(port: int) -> None:
    """good, malformed, good in one write: 200, the 400 refusal, the close; the third is not routed."""
    key = _fresh("after-bad")
    doc = _subjects(key)
    talk = _talk(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                 + b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n"
                 + _post(doc, f"Content-Length: {len(doc)}"), answers=2)
    _served_healthz(talk.answers[0])
    _refused(Talk(talk.answers[1:], talk.interim, talk.rest, talk.closed, talk.answered_s))
    assert not _stored(port, key)


@pytest.mark.parametrize("good", [2, 3, 8])
@pytest.mark.parametrize("bad", [b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n",
                                 b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                                 b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
                                 b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"],
                         ids=["nul in target", "negative length", "HTTP/2.0", "two hosts"])
def test_every_request_pipelined_before_a_malformed_one_is_answered_in_order(port: int, good: int, bad: bytes) -> None:
    """`good` requests, the last a POST with a body, then a malformed one, in one write: each good one answered in
    its place, then the refusal. With three or more before it, the answer of the last good request was lost (the
    refusal took its place in the queue, as if the bad bytes were its body) and the client read the refusal as that
    request's answer: found through the asyncio-loop test of test_http_server."""
    key = _fresh("before-bad")
    doc = _subjects(key)
    asks = b"".join(f"GET /api/v1/subjects/fr-absent-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                    for i in range(good - 1))
    talk = _talk(port, asks + _post(doc, f"Content-Length: {len(doc)}") + bad, answers=good + 1)
    assert [a.status for a in talk.answers[:good - 1]] == [404] * (good - 1), talk
    assert [a.json()["instance"] for a in talk.answers[:good - 1]] == [f"/api/v1/subjects/fr-absent-{i}"
                                                                        for i in range(good - 1)]
    assert talk.answers[good - 1].status == 200 and [s["key"] for s in talk.answers[good - 1].json()] == [key], talk
    _refused(Talk(talk.answers[good:], talk.interim, talk.rest, talk.closed, talk.answered_s), (400, 505))


# -- Content-Length and Transfer-Encoding ---------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["length first", "chunked first", "length 0"])
def test_content_length_with_chunked_is_refused_and_nothing_is_routed(port: int, order: str) -> None:
    """The request-smuggling shape (CL.TE / TE.CL): a proxy framing by Content-Length forwards the chunked body and
    the request hidden after it as one request; a server framing by chunks would route the hidden one as a second.
    RFC 9112 6.3 lets a server refuse it; a billing API must: 400, closed, neither request routed."""
    inner_key, hidden_key = _fresh("clte-inner"), _fresh("clte-hidden")
    inner, hidden = _subjects(inner_key), _subjects(hidden_key)
    body = _chunked(inner) + _post(hidden, f"Content-Length: {len(hidden)}")
    length = "Content-Length: 0" if order == "length 0" else f"Content-Length: {len(body)}"
    framing = [length, "Transfer-Encoding: chunked"]
    if order == "chunked first":
        framing.reverse()
    prob = _refused(_talk(port, _post(body, *framing), answers=1))
    assert prob["title"] == "Bad Request", prob
    assert not _stored(port, inner_key) and not _stored(port, hidden_key)


@pytest.mark.parametrize("lengths", [("16", "17"), ("16, 17",), ("16", "16, 17")])
def test_differing_content_lengths_are_refused(port: int, lengths: tuple[str, ...]) -> None:
    key = _fresh("cl-two")
    doc = _subjects(key)  # longer than any of the lengths
    _refused(_talk(port, _post(doc, *(f"Content-Length: {v}" for v in lengths))))
    assert not _stored(port, key)


def test_identical_content_lengths_are_served_once_or_refused(port: int) -> None:
    """RFC 9112 6.3 lets a recipient take one of identical values, or refuse: recorded, not prescribed. Either way
    one answer, and the request is stored only if it was answered 200."""
    key = _fresh("cl-same")
    doc = _subjects(key)
    talk = _talk(port, _post(doc, f"Content-Length: {len(doc)}", f"Content-Length: {len(doc)}",
                             "Connection: close"))
    if talk.answers and talk.answers[0].status == 200:
        assert len(talk.answers) == 1 and talk.closed and talk.rest == b"", talk
        assert _stored(port, key)
    else:
        _refused(talk)
        assert not _stored(port, key)


@pytest.mark.parametrize("value", ["1e3", "+5", " 5 x", "0x5", "5.0", "", "5,", "١٢", "99999999999999999999999999"])
def test_a_content_length_that_is_not_plain_digits_is_refused(port: int, value: str) -> None:
    raw = _post(b"abcde", "Content-Length: ").replace(b"Content-Length: ", b"Content-Length: " + value.encode())
    _refused(_talk(port, raw))


@pytest.mark.parametrize("size", ["zz", "0x10", "-5", "ffffffffffffffffff", "1_0", ""])
def test_a_chunk_size_that_is_not_hex_or_overflows_is_refused_at_once(port: int, size: str) -> None:
    """18 hex digits overflow a 64-bit size: refused at once, not read as a body that never comes."""
    key = _fresh("chunk-size")
    doc = _subjects(key)
    raw = _post(f"{size}\r\n".encode() + doc + b"\r\n0\r\n\r\n", "Transfer-Encoding: chunked")
    _refused(_talk(port, raw))
    assert not _stored(port, key)


def test_a_chunk_whose_data_overruns_its_size_is_refused(port: int) -> None:
    key = _fresh("overrun")
    doc = _subjects(key)
    _refused(_talk(port, _post(b"5\r\n" + doc + b"\r\n0\r\n\r\n", "Transfer-Encoding: chunked")))
    assert not _stored(port, key)


def test_a_chunked_body_with_extensions_and_trailers_is_read(port: int) -> None:
    key = _fresh("trailers")
    doc = _subjects(key)
    body = f"{len(doc[:4]):x};name=value\r\n".encode() + doc[:4] + b"\r\n" + f"{len(doc[4:]):x}\r\n".encode() \
        + doc[4:] + b"\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    talk = _talk(port, _post(body, "Transfer-Encoding: chunked", "Connection: close"))
    assert len(talk.answers) == 1 and talk.answers[0].status == 200 and talk.rest == b"", talk
    assert _stored(port, key)


def test_the_chunked_coding_name_is_case_insensitive(port: int) -> None:
    key = _fresh("chunked-case")
    doc = _subjects(key)
    talk = _talk(port, _post(_chunked(doc), "Transfer-Encoding: Chunked", "Connection: close"))
    assert len(talk.answers) == 1 and talk.answers[0].status == 200, talk
    assert _stored(port, key)


def test_transfer_encoding_in_a_http_1_0_request_is_refused(port: int) -> None:
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (an HTTP/1.0 proxy does not
    know chunked): 400, not routed."""
    key = _fresh("te-10")
    doc = _subjects(key)
    _refused(_talk(port, _post(_chunked(doc), "Transfer-Encoding: chunked", version="HTTP/1.0")))
    assert not _stored(port, key)


@pytest.mark.parametrize("header", ["Transfer-Encoding:\r\n chunked", "Content-Length:\r\n {n}"])
def test_a_folded_framing_header_is_refused(port: int, header: str) -> None:
    """obs-fold in Transfer-Encoding or Content-Length: a proxy that does not unfold frames the request otherwise.
    Refused, not routed."""
    key = _fresh("fold")
    doc = _subjects(key)
    body = _chunked(doc) if "chunked" in header else doc
    _refused(_talk(port, _post(body, header.replace("{n}", str(len(doc))))))
    assert not _stored(port, key)


# -- Expect: 100-continue -------------------------------------------------------------------------------------------
def test_expect_100_continue_gets_continue_then_the_answer(port: int) -> None:
    key = _fresh("expect")
    doc = _subjects(key)
    head = _post(b"", f"Content-Length: {len(doc)}", "Expect: 100-continue", "Connection: close")
    with socket.create_connection(("127.0.0.1", port), timeout=4) as conn:
        conn.sendall(head)
        conn.settimeout(AT_ONCE_S)
        try:
            first = conn.recv(65536)  # what a client waits for before sending the body
        except TimeoutError:
            first = b""  # no 100 within a client's wait: it sends the body anyway
        assert first == b"" or first.startswith(b"HTTP/1.1 100 "), first
        t0 = time.monotonic()
        conn.sendall(doc)
        conn.settimeout(4)
        buf = first
        while chunk := conn.recv(65536):
            buf += chunk
        took = time.monotonic() - t0
    got, rest = _parse(buf)
    assert [a.status for a in got] in ([100, 200], [200]) and rest == b"" and took < AT_ONCE_S, (buf, took)
    assert [sub["key"] for sub in got[-1].json()] == [key]


def test_expect_100_continue_over_the_body_limit_gets_413_and_no_continue(port: int) -> None:
    """The client is told at once not to send its 1 GB, instead of being invited to."""
    _refused(_talk(port, _post(b"", "Content-Length: 1000000000", "Expect: 100-continue")), statuses=(413,))


# -- request lines ----------------------------------------------------------------------------------------------------
def test_a_lowercase_method_is_not_served_as_the_method(port: int) -> None:
    """Methods are case-sensitive (RFC 9110 9.1): `get` is not GET. A 4xx problem (today 405 with Allow: GET)."""
    talk = _talk(port, b"get /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert len(talk.answers) == 1 and talk.rest == b"" and talk.closed, talk
    a = talk.answers[0]
    assert a.status in (400, 405, 501) and a.header("content-type") == "application/problem+json", talk
    assert a.json()["status"] == a.status, talk


@pytest.mark.parametrize("line", [
    b"GET /healthz",  # no version
    b"GET /healthz http/1.1",  # HTTP-name is case-sensitive
    b"G@T /healthz HTTP/1.1",  # not a token
    b"GET /heal\x00thz HTTP/1.1", b"GET /heal\x01thz HTTP/1.1", b"GET /heal\x7fthz HTTP/1.1",
    b"GET /heal\tthz HTTP/1.1", b"GET /heal thz HTTP/1.1", b"GET /heal\xffthz HTTP/1.1",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello on the plain port
], ids=lambda b: repr(b)[2:-1][:40])
def test_a_malformed_request_line_is_refused(port: int, line: bytes) -> None:
    _refused(_talk(port, line + b"\r\nHost: x\r\n\r\n"))


def test_a_http_0_9_simple_request_is_refused(port: int) -> None:
    _refused(_talk(port, b"GET /healthz\r\n\r\n"))


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9", "HTTP/3.0", "HTTP/9.9"])
def test_a_version_other_than_http_1_is_refused(port: int, version: str) -> None:
    """RFC 9110 2.5 / 15.6.6: a major version the server does not implement is refused (505, or 400), never served
    as HTTP/1.1."""
    _refused(_talk(port, f"GET /healthz {version}\r\nHost: x\r\n\r\n".encode()), statuses=(505, 400))


def test_a_single_empty_line_before_the_request_line_is_ignored(port: int) -> None:
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request-line (a client that ends a POST
    body with an extra CRLF sends one before its next request)."""
    talk = _talk(port, b"\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert len(talk.answers) == 1 and talk.rest == b"", talk
    _served_healthz(talk.answers[0])


# -- header lines -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line", [
    b"X-Foo : bar",  # space before the colon: RFC 9112 5.1 MUST 400
    b"Transfer-Encoding : chunked", b"Content-Length : 5",
    b"X-Foo\t: bar",
    b"X-Foo bar",  # no colon
    b": bar",  # no name
    b" X-Foo: bar",  # a continuation line first (RFC 9112 2.2: reject, or ignore it)
    b"X-A: a\x00b", b"X-A: a\rb",
], ids=lambda b: repr(b)[2:-1])
def test_a_malformed_header_line_is_refused(port: int, line: bytes) -> None:
    _refused(_talk(port, b"GET /healthz HTTP/1.1\r\n" + line + b"\r\nHost: x\r\n\r\n"))


@pytest.mark.parametrize("head", [b"GET /healthz HTTP/1.1\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"],
                         ids=["no Host", "two Hosts"])
def test_a_http_1_1_request_without_exactly_one_host_is_refused(port: int, head: bytes) -> None:
    _refused(_talk(port, head))


@pytest.mark.parametrize("raw", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Foo: bar\r\n baz\r\nConnection: close\r\n\r\n",  # obs-fold
    b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n",  # bare LF line ends
    b"GET /healthz HTTP/1.1\r\nHost: x\nConnection: close\r\n\r\n",  # one bare LF
    b"GET /healthz HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n",  # a higher minor version (RFC: serve as 1.1)
    b"GET  /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # two spaces (RFC 9112 3: MAY parse on words)
], ids=["obs-fold", "bare LF", "one bare LF", "HTTP/1.2", "two spaces"])
def test_a_lenient_form_is_served_or_refused_but_answered_once_at_once(port: int, raw: bytes) -> None:
    """RFC 9112 lets a server accept these or refuse them with 400: recorded, not prescribed (today: served)."""
    talk = _talk(port, raw)
    if talk.answers and talk.answers[0].status == 200:
        assert len(talk.answers) == 1 and talk.rest == b"" and talk.closed, talk
        assert talk.answered_s is not None and talk.answered_s < AT_ONCE_S, talk
        _served_healthz(talk.answers[0])
    else:
        _refused(talk)


def test_a_bare_cr_in_the_head_is_refused_at_once(port: int) -> None:
    """RFC 9112 2.2: a bare CR is invalid (or read as a space); waiting for a line end that never comes until the
    header timeout is neither."""
    _refused(_talk(port, b"GET /healthz HTTP/1.1\rHost: x\r\r"))


def test_bare_lf_chunk_lines_are_read_or_refused_at_once(port: int) -> None:
    """Chunk-size lines ended by a bare LF: read (RFC 9112 2.2 MAY) or refused at once; not a wait for a CRLF that
    never comes until the read timeout."""
    key = _fresh("chunk-lf")
    doc = _subjects(key)
    talk = _talk(port, _post(f"{len(doc):x}\n".encode() + doc + b"\n0\n\n", "Transfer-Encoding: chunked",
                             "Connection: close"))
    if talk.answers and talk.answers[0].status == 200:
        assert talk.answered_s is not None and talk.answered_s < AT_ONCE_S and len(talk.answers) == 1, talk
        assert _stored(port, key)
    else:
        _refused(talk)
        assert not _stored(port, key)


# -- HTTP/1.0, Connection -------------------------------------------------------------------------------------------
def test_a_http_1_0_request_without_host_is_answered_and_closed(port: int) -> None:
    talk = _talk(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert len(talk.answers) == 1 and talk.rest == b"" and talk.closed, talk
    _served_healthz(talk.answers[0])
    assert talk.answers[0].header("connection") == "close", talk


def test_a_http_1_0_keep_alive_is_kept_only_if_the_answer_says_so(port: int) -> None:
    """RFC 9112 9.3 / 1.0 persistence: the connection stays open only if the answer says `Connection: keep-alive`
    (then a second request is served on it); otherwise it is closed."""
    ask = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    talk = _talk(port, ask + ask, answers=2)
    _served_healthz(talk.answers[0])
    if (talk.answers[0].header("connection") or "").lower() == "keep-alive":
        assert len(talk.answers) == 2 and talk.rest == b"", talk
        _served_healthz(talk.answers[1])
    else:
        assert len(talk.answers) == 1 and talk.rest == b"" and talk.closed, talk


@pytest.mark.parametrize("value", ["close", "Close", "keep-alive, close"])
def test_connection_close_is_honoured(port: int, value: str) -> None:
    """The answer says close, the connection is closed, a request pipelined after it is not answered."""
    key = _fresh("after-close")
    doc = _subjects(key)
    talk = _talk(port, f"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: {value}\r\n\r\n".encode()
                 + _post(doc, f"Content-Length: {len(doc)}"), answers=1)
    assert len(talk.answers) == 1 and talk.rest == b"" and talk.closed, talk
    _served_healthz(talk.answers[0])
    assert talk.answers[0].header("connection") == "close", talk
    assert talk.answered_s is not None and talk.answered_s < AT_ONCE_S, talk
    assert not _stored(port, key)


@pytest.mark.parametrize("raw", [b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                 b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\nConnection: close\r\n\r\n"],
                         ids=["OPTIONS *", "CONNECT"])
def test_asterisk_and_authority_forms_get_one_problem(port: int, raw: bytes) -> None:
    talk = _talk(port, raw)
    assert len(talk.answers) == 1 and talk.rest == b"" and talk.closed, talk
    a = talk.answers[0]
    assert a.status in (400, 405, 501) and a.header("content-type") == "application/problem+json", talk
    assert a.json()["status"] == a.status, talk


def test_the_absolute_form_is_served(port: int) -> None:
    """RFC 9112 3.2.2: a server MUST accept the absolute-form."""
    talk = _talk(port, b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert len(talk.answers) == 1 and talk.rest == b"", talk
    _served_healthz(talk.answers[0])
