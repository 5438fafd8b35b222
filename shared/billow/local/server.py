"""The embedded host: one process serving the Lambda handlers. Each HTTP request becomes an API Gateway
HTTP API (payload 2.0) event for functions/ingest or functions/api; the in-process bus hands ingested
batches to functions/usage_sink in the MSK event shape. HTTP is uvicorn on httptools and uvloop (billow.local.asgi): requests are
served concurrently in worker threads, with header/read/keep-alive timeouts, a body size limit and a connection cap."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from billow.bootstrap import Container, Settings, build, install
from billow.local.asgi import ApiApp, BillowHttpProtocol, Drain, LambdaHost
from billow.local.datadir import hold
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


def route(method: str, path: str) -> Any:
    if path.rstrip("/") == "/api/v1/events" and method == "POST":
        from functions.ingest.handler import lambda_handler as ingest

        return ingest
    if method == "POST" and (path.rstrip("/") == "/api/v1/apps/stripe/webhook"
                             or re.fullmatch(r"/api/v1/apps/[^/]+/stripe/webhook/?", path)):
        from functions.stripe_webhook.handler import lambda_handler as stripe_webhook

        return stripe_webhook
    from functions.api.handler import lambda_handler as api

    return api


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop where it is installed (Linux, macOS): its transports, timers and executor hand-offs are
    C; the loop's own work per request (read, parse, schedule the worker, write) is most of a cached check's CPU.
    asyncio's loop elsewhere."""
    try:
        import uvloop
    except ImportError:  # Windows (tests: test_served_on_asyncios_loop_where_uvloop_is_missing)
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its signal handling: `billow serve` (cli) and tests stop it through `shutdown`."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _Listener:
    """The listening socket and the running server, with the handles the http.server host had (server_address,
    shutdown, server_close) that `billow serve` and tests stop it with."""

    def __init__(self, sock: socket.socket, server: _Uvicorn) -> None:
        self.socket, self.server = sock, server
        self.started, self.stopped = threading.Event(), threading.Event()

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        self.started.set()
        try:
            asyncio.run(self.server.serve(sockets=[self.socket]), loop_factory=_loop_factory())
        finally:
            self.stopped.set()

    def shutdown(self) -> None:
        """Stop accepting, let the requests in flight finish (graceful-shutdown timeout), return once stopped."""
        self.server.should_exit = True
        if self.started.is_set():
            self.stopped.wait()

    def server_close(self) -> None:
        self.socket.close()


class BillowServer:
    # Timeouts and limits of the HTTP layer; the body limit is settings.max_body_bytes (a 10,000-event batch fits).
    HEADER_TIMEOUT_S = 30.0  # request line + headers complete within this, from connect or the previous answer
    READ_TIMEOUT_S = 30.0  # each piece of a request body within this
    KEEPALIVE_S = 15  # an idle keep-alive connection is closed after this
    MAX_CONNECTIONS = 1024  # open connections; more are answered 503 and closed
    BACKLOG = 1024  # listen queue (was 5)
    MAX_HEADER_BYTES = 64 * 1024  # request line + headers (http.server allowed a 64 KiB line)
    GRACEFUL_S = 30  # on shutdown, requests in flight get this long to finish
    SWITCH_INTERVAL_S = 0.001  # GIL hand-over while serving (serve_forever)
    serving: threading.Thread | None = None  # the thread start_background serves on

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 8888, *,
                 header_timeout_s: float | None = None, read_timeout_s: float | None = None,
                 keepalive_s: int | None = None, max_connections: int | None = None) -> None:
        from functions.usage_sink.handler import lambda_handler as sink

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # The embedded engine's data dir is this process's alone (billow.local.datadir): a second process is refused
        # here, before it opens or writes anything.
        self._dir_lock = hold(settings.data_dir) if settings.usage_store == "chdb" else None
        try:
            sock = socket.create_server((host, port), family=family, backlog=self.BACKLOG)  # SO_REUSEADDR, as before
        except BaseException:
            self._release_dir()
            raise
        try:
            self._start(settings, sink, sock, header_timeout_s, read_timeout_s, keepalive_s, max_connections)
        except BaseException:
            sock.close()
            self._release_dir()
            raise

    def _release_dir(self) -> None:
        if self._dir_lock is not None:
            self._dir_lock.close()
            self._dir_lock = None

    def _start(self, settings: Settings, sink: Any, sock: socket.socket, header_timeout_s: float | None,
               read_timeout_s: float | None, keepalive_s: int | None, max_connections: int | None) -> None:
        deliver = lambda ev: sink(ev, None)  # noqa: E731
        self.container: Container = build(settings, deliver=deliver)
        install(self.container)
        self._provision(settings.namespace)
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
        lambdas = LambdaHost(auth=settings.auth == "keys", limiter=limiter)
        lambdas.prepare()
        self.drain = Drain()
        self.app = ApiApp(lambdas, max_body=settings.max_body_bytes, max_head=self.MAX_HEADER_BYTES, drain=self.drain,
                          read_timeout_s=read_timeout_s or self.READ_TIMEOUT_S)
        protocol = type("Protocol", (BillowHttpProtocol,), {
            "header_timeout_s": header_timeout_s or self.HEADER_TIMEOUT_S,
            "max_connections": max_connections or self.MAX_CONNECTIONS, "max_head": self.MAX_HEADER_BYTES})
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no "Uvicorn running on" banner
        config = uvicorn.Config(self.app, http=protocol, loop="asyncio", lifespan="off", ws="none",
                                interface="asgi3", log_config=None, access_log=False, proxy_headers=False, server_header=False,
                                date_header=False, timeout_keep_alive=keepalive_s or self.KEEPALIVE_S,
                                backlog=self.BACKLOG,
                                timeout_graceful_shutdown=self.GRACEFUL_S)
        self.httpd = _Listener(sock, _Uvicorn(config))
        # Notifications: the in-process stand-in for notify_dispatch's schedule and SQS wake-ups.
        from functions.notify_dispatch.local import LocalDispatcher

        self.notify = LocalDispatcher(self.container).start()
        # Billing: the in-process stand-in for billing_run's EventBridge schedule.
        from billow.local.scheduler import LocalBillingScheduler

        self.billing = LocalBillingScheduler(self.container, settings.billing_every_s).start()
        # LATEST meters whose values were stored before the usage store's migration 5: each one's fill (once; minutes
        # for millions of values) runs now, in the background, rather than in its first LATEST request.
        self._closing = threading.Event()
        self.latest_fill = threading.Thread(target=self._fill_latest, args=(settings.namespace,),
                                            name="billow-latest-fill", daemon=True)
        self.latest_fill.start()

    def _fill_latest(self, namespace: str) -> None:
        c = self.container
        try:
            meters = [m.id for m in c.meta.list_meters(namespace) if m.aggregation == "LATEST"]
            fill = getattr(c.usage, "fill_latest", None) if meters else None  # the ClickHouse store's (opens it)
            for meter_id in meters:
                if fill is None or self._closing.is_set():
                    return
                fill(namespace, meter_id)
        except Exception:
            if not self._closing.is_set():
                log.exception("LATEST fill at start failed: each meter's first LATEST query fills it")

    def _provision(self, namespace: str) -> None:
        """The configured namespace's sandbox app and default billing profile, as OpenMeter makes them when a
        namespace is created (billow.services.apps.provision; idempotent)."""
        from billow.services.apps import provision

        c = self.container
        provision(namespace, apps=c.app_store(), billing=c.billing_store(), now=c.clock.now())

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address

    def serve_forever(self) -> None:
        """Serve until shut down. Meanwhile the GIL goes to a waiting thread after SWITCH_INTERVAL_S of another's
        Python (CPython's default is 5 ms): a check passes it three times (event loop, check worker, event loop) and
        an ingest batch's parsing would otherwise make it wait up to 5 ms at each. The process's own setting is given
        back when serving stops."""
        previous = sys.getswitchinterval()
        sys.setswitchinterval(self.SWITCH_INTERVAL_S)
        try:
            self.httpd.serve_forever()
        finally:
            sys.setswitchinterval(previous)

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="billow-http", daemon=True)
        self.serving = t
        t.start()
        return t

    def close(self, drain_timeout_s: float = 30.0) -> None:
        """After the HTTP server stopped accepting: let the requests in flight finish (new ones on open
        connections get 503), then stop the sink poller, flush the bus, close the stores."""
        if not self.drain.wait(drain_timeout_s):
            log.warning("requests still in flight after %.0f s; closing anyway", drain_timeout_s)
        self.app.close()
        if self.poller is not None:
            self.poller.close()
        self.notify.close()
        self.billing.close()
        self._closing.set()  # no further meter's fill starts; one under way (if any) is given a while to end
        self.latest_fill.join(timeout=10)
        install(None)
        self.container.close()
        self._release_dir()

    def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.close(drain_timeout_s)


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
        f"  API reference  {url}/api/docs  (the document: {url}/api/v1/openapi.json)",
        f"  Portal         {url}/portal#token=...  (make a link: POST /api/v1/portal/tokens)",
        f"  Console        {url}/console  (operators: meters, customers, backtests, margin)",
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
