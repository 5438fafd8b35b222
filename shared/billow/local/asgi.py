"""`billow serve`'s HTTP layer: uvicorn (HTTP/1.1 parsed by httptools, i.e. llhttp, on uvloop) in front of the Lambda
handlers.

Each request is read on the event loop (headers within the header timeout, each piece of the body within the read
timeout, at most max_body bytes), turned into the API Gateway HTTP API (payload 2.0) event the Lambda gets, and
handed to the handler in a worker thread of its class of work (`work_class`): ingest, entitlement checks, usage queries
(meter queries, event lists) and the rest of the API each have their own pool, so none of them can take every worker
from the others (a batch, or a burst of slow meter queries, never holds up a cached check or a meter's creation). How
many usage queries the engine runs at once is the usage store's admission (bootstrap: embedded chdb runs one fewer
than the CPUs at once); query workers waiting for their turn hold no other class's worker. The API's powertools
resolver keeps the request it serves in class attributes (BaseRouter.current_event) and one dict (context);
`per_request_state` gives the one resolver instance the embedded host serves through a state per thread, so concurrent
requests never see each other's.

What the protocol itself answers, and how here (BillowHttpProtocol): a request llhttp cannot parse (bad request line,
bad, negative or repeated Content-Length, Content-Length beside Transfer-Encoding, a Transfer-Encoding other than
chunked, bad header characters) gets one 400 problem+json answer naming what llhttp found, after the answers of the
requests pipelined before it (one queued behind a request in flight is never run), and the connection is closed; a head over the size limit gets 414 (request line) or 431 (headers); a connection over the cap gets 503
problem+json and is closed; headers not complete within the header timeout get 408 problem+json (or, with nothing
sent yet, a plain close), as does a body stalled for the read timeout (ApiApp); an idle keep-alive connection is
closed after the keep-alive timeout. A request asking for a protocol upgrade is answered as plain HTTP, and the
connection closed after it. On h11 (until 2026-12-06) the loop's parsing took ~0.3 ms of a cached check's ~0.8 ms of
server CPU.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import queue
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import httptools
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from billow import jsonx
from billow.errors import problem
from billow.services import portal
from billow.services.ratelimit import TokenBuckets

log = logging.getLogger("billow.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SERVED_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH"})
TITLES = {400: "Bad Request", 408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
          414: "Request-URI Too Long", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
          500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable", 405: "Method Not Allowed",
          505: "HTTP Version Not Supported"}


# -- per-request resolver state ----------------------------------------------------------------------------
class _PerThread:
    """A data descriptor holding one value per thread (outside a request: the class-wide value, as powertools
    keeps it)."""

    def __init__(self, local: threading.local, name: str, fallback: Callable[[Any], Any]) -> None:
        self.local, self.name, self.fallback = local, name, fallback

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        try:
            return getattr(self.local, self.name)
        except AttributeError:
            return self.fallback(obj)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(self.local, self.name, value)


_REQUEST_STATE = ("current_event", "lambda_context", "context", "processed_stack_frames")


def per_request_state(app: Any) -> None:
    """Give this powertools resolver instance (not the library's classes) its request state per thread:
    current_event, lambda_context, context and the processed middleware frames. Its class becomes a subclass whose
    `resolve` sets them for the calling thread before routing and drops them after. Idempotent."""
    if getattr(type(app), "_billow_per_thread", False):
        return
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

    local = threading.local()
    base = type(app)
    shared_context: dict[str, Any] = app.__dict__.get("context", {})

    def resolve(self: Any, event: Any, context: Any) -> dict[str, Any]:
        # A request resolved inside another on this thread (a handler calling the API) gives the outer one its
        # state back when it ends; it deleted that state, and the outer request's end then failed (AttributeError).
        outer = {name: local.__dict__[name] for name in _REQUEST_STATE if name in local.__dict__}
        local.current_event = self._to_proxy_event(dict(event))
        local.lambda_context = context
        local.context = {}
        local.processed_stack_frames = []
        try:
            out: dict[str, Any] = base.resolve(self, event, context)
            return out
        finally:
            for name in _REQUEST_STATE:
                if name in outer:
                    setattr(local, name, outer[name])
                else:
                    delattr(local, name)

    cls = type(f"PerThread{base.__name__}", (base,), {
        "_billow_per_thread": True,
        "resolve": resolve,
        "current_event": _PerThread(local, "current_event", lambda _: BaseRouter.current_event),
        "lambda_context": _PerThread(local, "lambda_context", lambda _: BaseRouter.lambda_context),
        "context": _PerThread(local, "context", lambda _: shared_context),
        "processed_stack_frames": _PerThread(local, "processed_stack_frames", lambda _: []),
    })
    # Route middleware stacks are built lazily on a route's first call, unguarded: two threads building one at
    # once would wrap it twice. Build them all now, as the first request would.
    for route in app._static_routes + app._dynamic_routes:
        if not route._middleware_stack_built:
            route._build_middleware_stack(router_middlewares=app._router_middlewares, app=app)
    app.__class__ = cls


# -- the handlers, as API Gateway calls them ---------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    close: bool = False


def problem_reply(status: int, detail: str, instance: str, close: bool = False,
                  headers: list[tuple[str, str]] | None = None) -> Reply:
    body = jsonx.dumps(problem(status, TITLES.get(status, "Error"), detail, instance)).encode()
    return Reply(status, [("Content-Type", "application/problem+json"), *(headers or [])], body, close)


@dataclass
class LambdaHost:
    """Calls the Lambda handlers with API Gateway-shaped events, as API Gateway (and its authorizer) would."""

    auth: bool = False
    limiter: TokenBuckets | None = None
    api_state_ready: bool = field(default=False, init=False)

    def prepare(self) -> None:
        """Import the API (first request would otherwise pay for it) and give its resolver per-thread state."""
        from functions.api.handler import app

        per_request_state(app)
        self.api_state_ready = True

    def serve(self, method: str, target: str, headers: dict[str, str], body: bytes, client: str) -> Reply:
        from billow.local.server import apigw_event, route

        if method not in SERVED_METHODS:
            return self._not_allowed(method, target)
        event = apigw_event(method, target, headers, body, client)
        authorization = headers.get("authorization")
        # Portal tokens are checked with auth off too: the portal API serves only them.
        if authorization and (self.auth or portal.is_portal_bearer(authorization)):
            # What the API Gateway Lambda authorizer does in AWS: check the key, pass its namespace and scopes on.
            from billow.adapters.sql_portal import SqlPortalStore
            from billow.bootstrap import container
            from billow.services.apikeys import Unauthorized

            c = container()
            try:
                who, ctx = portal.authenticate_bearer(authorization, keys=c.keys, tokens=c.store(SqlPortalStore),
                                                      now=c.clock.now())
            except Unauthorized as exc:
                return Reply(401, [("Content-Type", "application/problem+json")],
                             jsonx.dumps(problem(401, "Unauthorized", exc.detail, target)).encode())
            event["requestContext"]["authorizer"] = {"lambda": ctx}
            if self.limiter is not None and (wait := self.limiter.take(who)) > 0:
                return problem_reply(429, f"this API key is over its rate limit of {self.limiter.rate:g} requests/s; "
                                     "retry after the given seconds", target,
                                     headers=[("Retry-After", str(math.ceil(wait)))])
        handler = route(method, urlsplit(target).path)
        try:
            result = handler(event, None)  # no LambdaContext outside Lambda
        except Exception:
            log.exception("handler failed")
            return problem_reply(500, "unexpected error; it was logged", target)
        out = result.get("body") or ""
        data = base64.b64decode(out) if result.get("isBase64Encoded") else out.encode("utf-8")
        hdrs = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
        for k, vs in (result.get("multiValueHeaders") or {}).items():
            hdrs.append((str(k), ",".join(str(v) for v in vs)))
        return Reply(int(result.get("statusCode", 200)), hdrs, data)

    @staticmethod
    def _not_allowed(method: str, target: str) -> Reply:
        # HEAD, OPTIONS, TRACE, QUERY, ...: the API serves none of these.
        from functions.api.handler import app
        from functions.api.home_routes import allowed_methods

        path = urlsplit(target).path
        allow = ", ".join(allowed_methods(app, path))
        if not allow:
            return problem_reply(405, f"{method} is not supported", target)
        body = jsonx.dumps(problem(405, "Method Not Allowed", f"{method} is not allowed on {path}; allowed: {allow}",
                                   target)).encode()
        return Reply(405, [("Content-Type", "application/problem+json"), ("Allow", allow)], body)


class Drain:
    """Counts requests in flight; once draining, new ones are refused and `wait` returns when none is left."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._inflight = 0
        self._draining = False

    def enter(self) -> bool:
        with self._cv:
            if self._draining:
                return False
            self._inflight += 1
            return True

    def leave(self) -> None:
        with self._cv:
            self._inflight -= 1
            self._cv.notify_all()

    def wait(self, timeout_s: float) -> bool:
        with self._cv:
            self._draining = True
            return self._cv.wait_for(lambda: self._inflight == 0, timeout=timeout_s)


_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header's value (RFC 9110 5.6.7), made once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    return _date[1]


class Workers:
    """One class of work's threads. Jobs wait in one queue in arrival order (queue.SimpleQueue: put and get are C);
    a job's result, or its exception, goes back to the awaiting request in one call on the loop. What
    ThreadPoolExecutor.submit and run_in_executor did per request (a concurrent Future, an idle-semaphore check,
    two futures chained by callbacks) was ~20 % of the event loop's time per cached check."""

    def __init__(self, n: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}_{i}", daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def call(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Reply], *args: Any) -> asyncio.Future[Reply]:
        done: asyncio.Future[Reply] = loop.create_future()

        def job() -> None:
            try:
                outcome: tuple[Reply | None, BaseException | None] = (fn(*args), None)
            except BaseException as exc:  # noqa: BLE001 (raised in the awaiting request, as run_in_executor does)
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(_settle, done, *outcome)
            except RuntimeError:  # the loop is closed (the server stopped): nobody awaits the answer
                pass

        self._jobs.put(job)
        return done

    def shutdown(self) -> None:
        """After the jobs queued so far: each thread ends, and is waited for."""
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()


def _settle(future: asyncio.Future[Reply], reply: Reply | None, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert reply is not None
        future.set_result(reply)


# -- the ASGI application -----------------------------------------------------------------------------------
class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class _HeadTooLarge(Exception):
    pass


class _Refused(Exception):
    """Raised in a parser callback: the request is answered `status` problem+json with `detail`, never routed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# An entitlement's value (per subject, per customer, v1 and v2), a customer's access and the portal's entitlements:
# what an application asks before letting a request through. A cached one costs well under a millisecond.
_CHECKS = re.compile(r"/api/v1/subjects/[^/]+/entitlements/[^/]+/value|/api/v[12]/customers/[^/]+/entitlements/[^/]+/value"
                     r"|/api/v1/customers/[^/]+/access|/api/v1/portal/entitlements")


# Reads of the usage store a client makes at will: meter queries (v1, portal), a meter's subjects and group-by values,
# event lists (v1, v2).
_QUERIES = re.compile(r"/api/v1/meters/[^/]+/query|/api/v1/portal/meters/[^/]+/query|/api/v1/meters/[^/]+/subjects"
                      r"|/api/v1/meters/[^/]+/group-by/[^/]+/values|/api/v[12]/events")


def work_class(method: str, path: str) -> str:
    """'ingest' (POST /api/v1/events), 'check' (GET of an entitlement value or access), 'query' (a usage query:
    GET of a meter query, subjects, group-by values or events, POST of a meter query) or 'api' (everything else)."""
    path = path.rstrip("/")
    if method == "POST" and path == "/api/v1/events":
        return "ingest"
    if method == "GET" and _CHECKS.fullmatch(path):
        return "check"
    if (method == "GET" or (method == "POST" and path.endswith("/query"))) and _QUERIES.fullmatch(path):
        return "query"
    return "api"


class ApiApp:
    """ASGI 3 app: read the request on the loop, serve it in a worker thread of its class of work, answer with one
    body."""

    def __init__(self, host: LambdaHost, *, max_body: int, max_head: int, read_timeout_s: float, drain: Drain,
                 api_workers: int = 4, ingest_workers: int = 16, check_workers: int = 4, query_workers: int = 4) -> None:
        # Ingest requests spend most of their time waiting for the sink's turn; the in-process bus stores the
        # batches waiting together in one write (group commit, adapters/inprocess_bus.py), so the more of them wait,
        # the fewer writes: 16 waiting workers, where 2 capped a group at 2 requests.
        self.host, self.max_body, self.read_timeout_s, self.drain = host, max_body, read_timeout_s, drain
        self.max_head = max_head
        self.pools = {"api": Workers(api_workers, "billow-api"), "ingest": Workers(ingest_workers, "billow-ingest"),
                      "check": Workers(check_workers, "billow-check"), "query": Workers(query_workers, "billow-query")}

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        method: str = scope["method"]
        qs: bytes = scope.get("query_string") or b""
        path = scope["raw_path"].decode("latin-1")
        target = path + ("?" + qs.decode("latin-1") if qs else "")
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            lk, sv = k.decode("latin-1").lower(), v.decode("latin-1")
            headers[lk] = f"{headers[lk]},{sv}" if lk in headers else sv
        # The protocol limits a head still arriving (BillowHttpProtocol.max_head); one that came in whole is checked here.
        if len(target) > self.max_head:
            await self._send(send, problem_reply(414, f"the request target is over {self.max_head} bytes",
                                                 target[:200], close=True), method)
            return
        if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.max_head:
            await self._send(send, problem_reply(431, f"the request headers are over {self.max_head} bytes",
                                                 target[:200], close=True), method)
            return
        length = headers.get("content-length")  # llhttp checked it is digits, one value
        if length is not None and int(length.split(",")[0]) > self.max_body:
            await self._send(send, problem_reply(413, f"request body over {self.max_body} bytes", target, close=True),
                             method)
            return
        try:
            # No Content-Length and no Transfer-Encoding: no body (RFC 9112 6.3), nothing to wait for.
            body = (await self._body(receive) if length is not None or "transfer-encoding" in headers else b"")
        except _Disconnected:
            return
        except _BodyTooLarge:
            await self._send(send, problem_reply(413, f"request body over {self.max_body} bytes", target, close=True),
                             method)
            return
        except TimeoutError:
            await self._send(send, problem_reply(408, f"the request body stalled for {self.read_timeout_s:g} s",
                                                 target, close=True), method)
            return
        if not self.drain.enter():
            await self._send(send, problem_reply(503, "the server is shutting down; retry against another instance "
                                                 "or after it restarts", target, close=True), method)
            return
        try:
            client = (scope.get("client") or ("", 0))[0]
            workers = self.pools[work_class(method, path)]
            reply = await workers.call(asyncio.get_running_loop(), self.host.serve, method, target, headers, body,
                                       client)
        finally:
            self.drain.leave()
        await self._send(send, reply, method)

    async def _body(self, receive: Receive) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            async with asyncio.timeout(self.read_timeout_s):
                message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _BodyTooLarge
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    async def _send(send: Send, reply: Reply, method: str) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers
                   if k.lower() not in ("content-length", "connection", "date", "server", "transfer-encoding")]
        if reply.status not in (204, 304):  # RFC 9110 8.6: no Content-Length on a 204 (nor a 304's own)
            headers.append((b"Content-Length", str(len(reply.body)).encode()))
        headers += [(b"Server", b"billow"), (b"Date", http_date())]
        if reply.close:
            headers.append((b"Connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if method == "HEAD" or reply.status in (204, 304) else reply.body})


# -- the HTTP protocol: uvicorn's httptools protocol with problem+json errors, a header timeout, limits, a cap ---------
def raw_problem(status: int, detail: str, instance: str) -> bytes:
    """A complete HTTP/1.1 problem+json response that closes the connection, for the answers the protocol makes
    itself (the request could not be parsed, or not in time)."""
    body = jsonx.dumps(problem(status, TITLES.get(status, "Error"), detail, instance)).encode()
    head = (f"HTTP/1.1 {status} {TITLES.get(status, 'Error')}\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nServer: billow\r\nDate: {http_date().decode()}"
            "\r\n\r\n")
    return head.encode("latin-1") + body


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle, answering as ApiApp does (one start, then one whole body with its
    Content-Length): the head and the body go out in one write, with the header names as the handlers gave them
    (uvicorn's own lower-cases them: legal, but a client reading headers case-sensitively would miss Content-Type).
    Anything else goes through uvicorn's send."""

    _start: tuple[int, list[tuple[bytes, bytes]]] | None = None

    async def send(self, message: Message) -> None:  # type: ignore[override]
        if self.response_started or self.disconnected:
            await super().send(message)  # type: ignore[arg-type]
            return
        if message["type"] == "http.response.start" and self._start is None:
            self._start = (message["status"], list(message.get("headers", [])))
            return
        if self._start is None or message["type"] != "http.response.body" or message.get("more_body", False):
            await super().send(message)  # type: ignore[arg-type]
            return
        if self.flow.write_paused:
            await self.flow.drain()  # pragma: no cover (a client not reading its answers)
            if self.disconnected:
                return
        status, headers = self._start
        body: bytes = message.get("body", b"")
        content = [STATUS_LINE[status]]
        length, closes = None, False
        for name, value in headers:
            if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                raise RuntimeError(f"invalid response header {name!r}")
            lname = name.lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]:
                self.keep_alive, closes = False, True
            content += [name, b": ", value, b"\r\n"]
        if status in (204, 304) and (body or length is not None):
            raise RuntimeError(f"a {status} answer has no body and no Content-Length")
        if status not in (204, 304) and (length is None or (self.scope["method"] != "HEAD" and length != len(body))):
            raise RuntimeError("an answer names its whole body's Content-Length")
        if not self.keep_alive and not closes:
            content.append(b"Connection: close\r\n")
        content.append(b"\r\n")
        if self.scope["method"] != "HEAD":
            content.append(body)
        self.response_started = True
        self.waiting_for_100_continue = False
        self.transport.write(b"".join(content))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


def _answer(reply: Reply) -> Any:
    """An ASGI app that answers `reply` whatever the request (a queued request refused in its turn)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await ApiApp._send(send, reply, scope["method"])

    return app


class BillowHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, strict: a Transfer-Encoding other than chunked, Content-Length beside
    it, two Content-Lengths or one that is not digits are parse errors), with Billow's answers to what it refuses
    itself (see the module docstring). llhttp has no size limit for a request's head: a target longer than `max_head`
    is answered 414 as it comes (on_url), and the bytes that arrive while a head is incomplete are counted, from the
    read after the one the request began in: past `max_head`, 431. Either closes the connection, so a head that never
    ends holds at most about two reads past the limit. A head complete within one read is checked by ApiApp (target
    and header sizes)."""

    header_timeout_s: float = 30.0
    max_connections: int = 1024
    max_head: int = 64 * 1024

    _header_timer: asyncio.TimerHandle | None = None
    _in_head = False  # a request's first byte is in, its headers are not complete yet
    _head_bytes = 0  # bytes received while in the head (counted per read, from the read after the request began)
    _refusal: tuple[int, str] | None = None  # a bad request's answer, waiting for the answers before it

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A response goes out as several writes (head, body): with Nagle on, each later one waits for the client's
        # delayed ACK of the first (~40 ms). Set on every TCP socket (uvloop sets it too; asyncio's loop does not
        # for a socket whose proto is 0, as socket.create_server makes them).
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.connections) > self.max_connections:
            log.warning("connection refused: %d open connections (cap %d)", len(self.connections) - 1,
                        self.max_connections)
            transport.write(raw_problem(503, f"this server holds at most {self.max_connections} open connections; "
                                        "retry shortly", ""))
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:  # the parser is in error: nothing after the bad request is read
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No upgrade is served (no WebSocket): the request, whose head is in, is answered as plain HTTP and the
            # connection closed after it (llhttp would take what follows for the other protocol's bytes).
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # an exception of ours inside a parser callback says more than llhttp's words
            if isinstance(cause, _Refused):
                self._refuse_in_turn(cause.status, cause.detail)
            elif self._in_head and len(getattr(self, "url", b"")) > self.max_head:
                self._refuse_in_turn(414, "the request line (method, target, version) is over the size limit")
            else:
                self._refuse_in_turn(400, str(cause or exc) or "the request could not be parsed")
            return
        if self._in_head and self._head_bytes > self.max_head and not self.transport.is_closing():
            # (a target over the limit is refused by on_url as it comes: 414)
            self._refuse(431, "the request headers are over the size limit")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_head:
            raise _HeadTooLarge  # (feed_data raises it as a parser error: answered 414 in data_received)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_header_timer()  # a request's headers are in
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):  # (llhttp reads a request line without a version as HTTP/0.9)
            raise _Refused(400 if version == "0.9" else 505, f"HTTP/{version} is not served; send HTTP/1.1")
        names = [name for name, _ in self.headers]  # (lower-cased by uvicorn)
        if version == "1.1" and names.count(b"host") != 1:  # RFC 9112 3.2: MUST answer 400
            raise _Refused(400, f"an HTTP/1.1 request has exactly one Host header, not {names.count(b'host')}")
        if version == "1.0" and b"transfer-encoding" in names:  # RFC 9112 6.1: faulty framing
            raise _Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
        super().on_headers_complete()
        # The cycle's task is scheduled, not started: it reads `cycle.send` when it starts, as a _Cycle.
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = _Cycle

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._refusal is not None and not self._answering():  # every request before the bad one is answered
            self._refuse(*self._refusal)
            return
        if self.cycle is None or self.cycle.response_complete:  # waiting for the next request's headers
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:  # a request begun and not finished: say why it is dropped
            self.transport.write(raw_problem(408, f"the request headers were not complete within "
                                             f"{self.header_timeout_s:g} s", self._target()))
        self.transport.close()

    def _target(self) -> str:
        return (getattr(self, "url", b"") or b"").decode("latin-1")[:200]

    def _answering(self) -> bool:
        """A request before the one being parsed is not answered yet (in flight, or pipelined behind one)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse_in_turn(self, status: int, detail: str) -> None:
        """Refuse the request being parsed after the requests before it are answered, in order; at once when there
        are none, or when the bad bytes are the body of the request being answered (it cannot be answered). A request
        waiting its turn behind one in flight, whose body holds the bad bytes, is never run: in its turn it is
        answered the refusal."""
        for n, (cycle, _) in enumerate(self.pipeline):
            if cycle is self.cycle and cycle.more_body:  # (its body was being read: the bad bytes are in it)
                self.pipeline[n] = (cycle, _answer(problem_reply(status, detail, self._target(), close=True)))
                self._refusal = (status, detail)  # (nothing more is read)
                self._cancel_header_timer()
                return
        if self._answering() and not (self.cycle is not None and self.cycle.more_body):
            self._refusal = (status, detail)
            self._cancel_header_timer()
        else:
            self._refuse(status, detail)

    def _refuse(self, status: int, detail: str) -> None:
        self._cancel_header_timer()
        self.transport.write(raw_problem(status, detail, self._target()))
        self.transport.close()
