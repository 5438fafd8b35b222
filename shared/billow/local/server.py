"""The embedded host: one process serving the Lambda handlers. Each HTTP request becomes an API Gateway
HTTP API (payload 2.0) event for functions/ingest or functions/api; the in-process bus hands ingested
batches to functions/usage_sink in the MSK event shape."""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from billow import jsonx
from billow.bootstrap import Container, Settings, build, install
from billow.errors import problem
from billow.services import portal
from billow.services.ratelimit import TokenBuckets

log = logging.getLogger("billow.serve")


def apigw_event(method: str, target: str, headers: dict[str, str], body: bytes, client: str) -> dict[str, Any]:
    parts = urlsplit(target)
    qsp: dict[str, str] = {}
    if parts.query:
        from urllib.parse import parse_qsl

        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            qsp[k] = f"{qsp[k]},{v}" if k in qsp else v
    try:
        text, b64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, b64 = base64.b64encode(body).decode(), True
    now = time.time()
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": parts.path, "rawQueryString": parts.query,
        "headers": headers, "queryStringParameters": qsp or None,
        "requestContext": {
            "accountId": "local", "apiId": "billow-local", "domainName": "localhost", "domainPrefix": "localhost",
            "http": {"method": method, "path": parts.path, "protocol": "HTTP/1.1", "sourceIp": client,
                     "userAgent": headers.get("user-agent", "")},
            "requestId": str(uuid.uuid4()), "routeKey": "$default", "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)), "timeEpoch": int(now * 1000),
        },
        "body": text or None, "isBase64Encoded": b64,
    }


_api_lock = threading.Lock()


def _api(event: dict[str, Any], context: Any) -> Any:
    """functions/api one request at a time, as one Lambda execution environment runs it: powertools' resolver keeps
    the request it serves in a class attribute (BaseRouter.current_event), so two threads inside it would route on,
    and read the path, query and body of, each other's request."""
    from functions.api.handler import lambda_handler as api

    with _api_lock:
        return api(event, context)


def route(method: str, path: str) -> Any:
    if path.rstrip("/") == "/api/v1/events" and method == "POST":
        from functions.ingest.handler import lambda_handler as ingest

        return ingest
    if path.rstrip("/") == "/api/v1/apps/stripe/webhook" and method == "POST":
        from functions.stripe_webhook.handler import lambda_handler as stripe_webhook

        return stripe_webhook
    return _api


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "billow"
    max_body: int = 16 * 1024 * 1024
    auth: bool = False
    limiter: TokenBuckets | None = None

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.client_address[0], *args)

    def _send(self, status: int, headers: dict[str, Any], body: bytes, close: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("content-length", "connection"):
                self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (414 URI too long, 431, a bad request line) as problem+json, not HTML."""
        from http import HTTPStatus

        title = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Error"
        self.path = getattr(self, "path", "") or ""
        self._problem(code, title, explain or message or title, close=True)

    def _problem(self, status: int, title: str, detail: str, close: bool = False) -> None:
        body = jsonx.dumps(problem(status, title, detail, self.path)).encode()
        self._send(status, {"Content-Type": "application/problem+json"}, body, close)

    def _dispatch(self) -> None:
        gate: _Drain = self.server.drain  # type: ignore[attr-defined]
        if not gate.enter():
            self._problem(503, "Service Unavailable", "the server is shutting down; retry against another "
                          "instance or after it restarts", close=True)
            return
        try:
            self._serve_one()
        finally:
            gate.leave()

    def _serve_one(self) -> None:
        length_raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._problem(411, "Length Required", "send the body with a Content-Length", close=True)
            return
        try:
            length = int(length_raw) if length_raw else 0
        except ValueError:
            self._problem(400, "Bad Request", "invalid Content-Length", close=True)
            return
        if length > self.max_body:
            self._problem(413, "Payload Too Large", f"request body over {self.max_body} bytes", close=True)
            return
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            lk = k.lower()
            headers[lk] = f"{headers[lk]},{v}" if lk in headers else v
        event = apigw_event(self.command, self.path, headers, body, self.client_address[0])
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
                self._problem(401, "Unauthorized", exc.detail)
                return
            event["requestContext"]["authorizer"] = {"lambda": ctx}
            if self.limiter is not None and (wait := self.limiter.take(who)) > 0:
                body = jsonx.dumps(problem(429, "Too Many Requests", f"this API key is over its rate limit of "
                                           f"{self.limiter.rate:g} requests/s; retry after the given seconds",
                                           self.path)).encode()
                self._send(429, {"Content-Type": "application/problem+json", "Retry-After": str(math.ceil(wait))},
                           body)
                return
        handler = route(self.command, urlsplit(self.path).path)
        try:
            result = handler(event, None)  # no LambdaContext outside Lambda
        except Exception:
            log.exception("handler failed")
            self._problem(500, "Internal Server Error", "unexpected error; it was logged")
            return
        out = result.get("body") or ""
        data = base64.b64decode(out) if result.get("isBase64Encoded") else out.encode("utf-8")
        hdrs = dict(result.get("headers") or {})
        for k, vs in (result.get("multiValueHeaders") or {}).items():
            hdrs[k] = ",".join(vs)
        self._send(int(result.get("statusCode", 200)), hdrs, data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _not_allowed(self) -> None:
        # http.server answers methods without a do_* with a 501 HTML page; the API serves none of these.
        from functions.api.handler import app
        from functions.api.home_routes import allowed_methods

        path = urlsplit(self.path).path
        allow = ", ".join(allowed_methods(app, path))
        if not allow:
            self._problem(405, "Method Not Allowed", f"{self.command} is not supported", close=True)
            return
        body = jsonx.dumps(problem(405, "Method Not Allowed", f"{self.command} is not allowed on {path}; allowed: "
                                   f"{allow}", self.path)).encode()
        self._send(405, {"Content-Type": "application/problem+json", "Allow": allow}, body, close=True)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # any other method (HEAD, OPTIONS, TRACE, QUERY, ...)
            return self._not_allowed
        raise AttributeError(name)


class _Drain:
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


class BillowServer:
    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 8888) -> None:
        from functions.usage_sink.handler import lambda_handler as sink

        deliver = lambda ev: sink(ev, None)  # type: ignore[arg-type]  # noqa: E731
        self.container: Container = build(settings, deliver=deliver)
        install(self.container)
        self.poller: Any = None
        if settings.bus == "kafka":  # play the MSK trigger against the real broker
            from billow.adapters.kafka import KafkaBus, KafkaSinkPoller
            from billow.bus import topic_for

            topic = topic_for(settings.namespace)
            assert isinstance(self.container.bus, KafkaBus)
            self.container.bus.ensure_topic(topic)
            self.poller = KafkaSinkPoller(settings.kafka_config(), [topic], deliver, group=settings.kafka_group,
                                          lock=self.container.sink_lock)
            self.poller.start()
        rate = settings.rate_limit_per_key
        limiter = TokenBuckets(rate, 2 * rate) if rate and settings.auth == "keys" else None
        handler = type("Handler", (_Handler,), {"max_body": settings.max_body_bytes, "auth": settings.auth == "keys",
                                                "limiter": limiter})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.drain = _Drain()
        self.httpd.drain = self.drain  # type: ignore[attr-defined]
        # Notifications: the in-process stand-in for notify_dispatch's schedule and SQS wake-ups.
        from functions.notify_dispatch.local import LocalDispatcher

        self.notify = LocalDispatcher(self.container).start()
        # Billing: the in-process stand-in for billing_run's EventBridge schedule.
        from billow.local.scheduler import LocalBillingScheduler

        self.billing = LocalBillingScheduler(self.container, settings.billing_every_s).start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="billow-http", daemon=True)
        t.start()
        return t

    def close(self, drain_timeout_s: float = 30.0) -> None:
        """After the HTTP server stopped accepting: let the requests in flight finish (new ones on open
        connections get 503), then stop the sink poller, flush the bus, close the stores."""
        if not self.drain.wait(drain_timeout_s):
            log.warning("requests still in flight after %.0f s; closing anyway", drain_timeout_s)
        if self.poller is not None:
            self.poller.close()
        self.notify.close()
        self.billing.close()
        install(None)
        self.container.close()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.close()


def welcome(settings: Settings, host: str, port: int) -> str:
    """What `billow serve` prints once it listens: where, the data dir, auth, and the first commands to try."""
    from pathlib import Path

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"  # noqa: S104 (a display name)
    keyed = settings.auth == "keys"
    auth = ("API keys: send Authorization: Bearer <token> (make one: billow keys create --name me --scope admin)"
            if keyed else "OFF - anyone who reaches this port can read and write; put `auth: keys` in billow.yaml "
            "before exposing it")
    bearer = " -H 'Authorization: Bearer $TOKEN'" if keyed else ""
    meter = ('{"slug":"tokens","eventType":"prompt","aggregation":"SUM","valueProperty":"$.tokens",'
             '"groupBy":{"model":"$.model"}}')
    event = ('{"specversion":"1.0","id":"e1","source":"app","type":"prompt","subject":"acme",'
             '"data":{"tokens":"0.1","model":"gpt"}}')
    return "\n".join([
        f"billow: ready, listening on http://{host}:{port}",
        f"  API            {url}/api/v1",
        f"  API reference  {url}/api/v1/openapi.json",
        f"  Portal         {url}/portal#token=...  (make a link: POST /api/v1/portal/tokens)",
        f"  Health         {url}/healthz",
        f"  Data dir       {Path(settings.data_dir).resolve()}",
        f"  Auth           {auth}",
        "  Try:",
        f"    curl -s -X POST {url}/api/v1/meters{bearer} -H 'Content-Type: application/json' -d '{meter}'",
        f"    curl -s -X POST {url}/api/v1/events{bearer} -H 'Content-Type: application/cloudevents+json' "
        f"-d '{event}'",
        f"    curl -s '{url}/api/v1/meters/tokens/query?windowSize=HOUR&groupBy=model'{bearer}",
        "  Stop with Ctrl-C.",
    ])
