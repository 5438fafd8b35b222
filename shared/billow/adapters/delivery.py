"""Notification senders (webhooks signed per Standard Webhooks, Slack incoming webhooks, e-mail through SES)
and the wake-up signal that brings a dispatcher: in `billow serve` the in-process dispatcher thread, in AWS an
SQS message to the notify_dispatch queue (`BILLOW_NOTIFY_QUEUE_URL`, set by the CDK stack), else nothing (the
minute schedule still comes)."""

from __future__ import annotations

import http.client
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from billow import jsonx
from billow.domain import notifications as dn
from billow.domain.notifications import Outcome

TIMEOUT_S = 5.0  # connect + read, per attempt: a slow endpoint fails the attempt with 'timeout' and is retried
MAX_BODY = 1000  # characters of the receiver's response kept in the attempt
USER_AGENT = "billow-notifications/1"
EMAIL_FROM = "notifications@billow.invalid"  # BILLOW_NOTIFY_EMAIL_FROM overrides (a verified SES identity)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is the answer: the channel URL is the destination


class HttpSender:
    """POSTs JSON with short timeouts; never follows redirects. The standard library's client: the Lambda layer
    ships no third-party HTTP client of its own (httpx is a dev dependency only)."""

    def __init__(self, timeout_s: float = TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.opener = urllib.request.build_opener(_NoRedirect)

    def post(self, url: str, body: str, headers: dict[str, str]) -> Outcome:
        started = time.monotonic()

        def ms() -> int:
            return int((time.monotonic() - started) * 1000)

        req = urllib.request.Request(url, data=body.encode(), method="POST", headers={
            **headers, "Content-Type": "application/json", "User-Agent": USER_AGENT})
        try:
            with self.opener.open(req, timeout=self.timeout_s) as resp:
                status, text = int(resp.status), resp.read(MAX_BODY * 4).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:  # a non-2xx answer
            status, text = exc.code, (exc.read(MAX_BODY * 4).decode("utf-8", "replace") if exc.fp else "")
        except TimeoutError:
            return Outcome(False, True, "timeout", duration_ms=ms(), url=url)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return Outcome(False, True, "timeout", duration_ms=ms(), url=url)
            return Outcome(False, True, f"connection error: {exc.reason}"[:300], duration_ms=ms(), url=url)
        except (OSError, http.client.HTTPException, ValueError) as exc:  # reset, bad status line, TLS
            return Outcome(False, True, f"connection error: {type(exc).__name__}: {exc}"[:300], duration_ms=ms(),
                           url=url)
        ok, retry = dn.classify_status(status)
        reason = f"HTTP {status}" + ("" if ok or retry else " (not retried: the receiver refused it)")
        return Outcome(ok, retry, reason, status_code=status, body=text[:MAX_BODY], duration_ms=ms(), url=url)

    def webhook(self, channel: dict[str, Any], payload: str, message_id: str, now: datetime) -> Outcome:
        signature = Webhook(channel["signingSecret"]).sign(message_id, now, payload)
        headers = {**channel.get("customHeaders", {}), "webhook-id": message_id,
                   "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
        return self.post(channel["url"], payload, headers)

    def slack(self, channel: dict[str, Any], payload: str, message_id: str, now: datetime) -> Outcome:
        return self.post(channel["url"], json.dumps({"text": dn.summary(jsonx.loads(payload))}), {})


class SesSender:
    """E-mail through Amazon SES (boto3 resolves AWS_ENDPOINT_URL, so LocalStack serves it in tests)."""

    def __init__(self, sender: str | None = None, client: Any = None) -> None:
        self.sender = sender or os.environ.get("BILLOW_NOTIFY_EMAIL_FROM") or EMAIL_FROM
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("ses", config=Config(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S,
                                                             retries={"max_attempts": 1}))
        return self._client

    def __call__(self, channel: dict[str, Any], payload: str, message_id: str, now: datetime) -> Outcome:
        from botocore.exceptions import BotoCoreError, ClientError

        started = time.monotonic()
        doc = jsonx.loads(payload)
        text = dn.summary(doc) + "\n\n" + json.dumps(json.loads(payload), indent=2)
        try:
            out = self.client.send_email(
                Source=self.sender, Destination={"ToAddresses": channel["recipients"]},
                Message={"Subject": {"Data": dn.summary(doc)[:200], "Charset": "UTF-8"},
                         "Body": {"Text": {"Data": text, "Charset": "UTF-8"}}},
                Tags=[{"Name": "billow-event", "Value": message_id}])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            retry = code in ("Throttling", "ThrottlingException", "ServiceUnavailable", "InternalFailure")
            return Outcome(False, retry, f"SES {code}: {exc}"[:300], duration_ms=int((time.monotonic() - started) * 1000))
        except BotoCoreError as exc:  # endpoint unreachable, timeouts
            return Outcome(False, True, f"SES unreachable: {exc}"[:300],
                           duration_ms=int((time.monotonic() - started) * 1000))
        return Outcome(True, False, "sent", body=str(out.get("MessageId", "")),
                       duration_ms=int((time.monotonic() - started) * 1000))


class Senders:
    """The `send` of services.notifications.dispatch_due: one sender per channel type."""

    def __init__(self, http: HttpSender | None = None, email: SesSender | None = None) -> None:
        self.http = http or HttpSender()
        self.email = email or SesSender()

    def __call__(self, channel: dict[str, Any], payload: str, message_id: str, now: datetime) -> Outcome:
        if channel["type"] == dn.WEBHOOK:
            return self.http.webhook(channel, payload, message_id, now)
        if channel["type"] == dn.SLACK:
            return self.http.slack(channel, payload, message_id, now)
        return self.email(channel, payload, message_id, now)


class SqsWake:
    """Asks the notify_dispatch function to run: a message on its queue, delayed up to SQS's 15 minutes."""

    def __init__(self, queue_url: str) -> None:
        import boto3

        self.queue_url = queue_url
        self.client = boto3.client("sqs")

    def __call__(self, delay_s: float) -> None:
        self.client.send_message(QueueUrl=self.queue_url,
                                 MessageBody=json.dumps({"job": "notify_dispatch", "reason": "wake"}),
                                 DelaySeconds=max(0, min(900, math.ceil(delay_s))))


_local_wake: Callable[[float], None] | None = None
_sqs_wakes: dict[str, SqsWake] = {}
_lock = threading.Lock()


def set_local_wake(fn: Callable[[float], None] | None) -> None:
    """The in-process dispatcher of `billow serve` registers itself here (None when it stops)."""
    global _local_wake
    _local_wake = fn


def wake(delay_s: float) -> None:
    """Bring a dispatcher in about `delay_s` seconds; best effort (the minute schedule is the backstop)."""
    if _local_wake is not None:
        _local_wake(delay_s)
        return
    url = os.environ.get("BILLOW_NOTIFY_QUEUE_URL")
    if not url:
        return
    try:
        with _lock:
            sender = _sqs_wakes.get(url) or _sqs_wakes.setdefault(url, SqsWake(url))
        sender(delay_s)
    except Exception:  # noqa: BLE001 - the schedule delivers anyway; never fail the caller's write for this
        import logging

        logging.getLogger("billow.notifications").warning("could not queue a notify_dispatch wake-up", exc_info=True)
