"""HTTP client for Billow's OpenMeter-compatible v1 API, on the standard library only (urllib)."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from billow_sdk.batcher import Batcher

RETRY_STATUSES = (429, 503)


class BillowError(Exception):
    """A request Billow refused: the RFC 7807 problem it answered (`status`, `title`, `detail`, plus `type`,
    `instance` and the whole body in `problem`). Connection failures that outlast the retries raise it too,
    with status 0 and title "Connection failed"."""

    def __init__(self, status: int, title: str, detail: str, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail = status, title, detail
        self.problem: dict[str, Any] = dict(problem or {})
        self.type: str = self.problem.get("type", "about:blank")
        self.instance: str | None = self.problem.get("instance")
        self.events: list[dict[str, Any]] = []  # set by the Batcher: the batch that failed


def _to_json(value: Any) -> bytes:
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return str(o)  # a numeric string: Billow's meters read it exactly
        if isinstance(o, datetime):
            return _rfc3339(o)
        raise TypeError(f"cannot send {type(o).__name__} as JSON")

    return json.dumps(value, default=default).encode()


def _rfc3339(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Client:
    """`Client("http://127.0.0.1:8888", api_key="bk_...")`. JSON numbers in responses come back as `int` or
    `decimal.Decimal` (never float); `Decimal` values in event data are sent as numeric strings."""

    def __init__(self, url: str, api_key: str | None = None, *, source: str = "billow-sdk-python",
                 timeout: float = 30.0, retries: int = 4, backoff: float = 0.2, max_backoff: float = 5.0) -> None:
        self.url, self.api_key, self.source, self.timeout = url.rstrip("/"), api_key, source, timeout
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff

    # -- ingest -------------------------------------------------------------------------------------------
    def event(self, type: str, subject: str, data: Mapping[str, Any] | None = None, *, id: str | None = None,
              source: str | None = None, time: datetime | None = None) -> dict[str, Any]:
        """A CloudEvent. The id defaults to a new UUID and the time to now, both fixed here, so a retried or
        batched event keeps them (Billow deduplicates on source + id)."""
        return {"specversion": "1.0", "id": id or str(uuid.uuid4()), "source": source or self.source,
                "type": type, "subject": subject, "time": _rfc3339(time or datetime.now(UTC)),
                "data": dict(data or {})}

    def ingest(self, event: Mapping[str, Any]) -> None:
        self._call("POST", "/api/v1/events", body=event, content_type="application/cloudevents+json")

    def ingest_batch(self, events: Sequence[Mapping[str, Any]]) -> None:
        """All or nothing: Billow stores every event of the batch or, if one is invalid, none."""
        self._call("POST", "/api/v1/events", body=list(events), content_type="application/cloudevents-batch+json")

    def ingest_batch_with_receipt(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """`ingest_batch`, answered with Billow's ingestion receipt (`Prefer: return=representation`): `events`,
        `accepted`, `duplicates` (the keys already stored or repeated in the batch: a resent batch lists them all),
        `ingestedAt`, `digest` and its `id` for `receipt`."""
        return cast(dict[str, Any], self._call("POST", "/api/v1/events", body=list(events),
                                               content_type="application/cloudevents-batch+json",
                                               headers={"Prefer": "return=representation"}))

    def receipt(self, receipt_id: str) -> dict[str, Any]:
        """An ingestion receipt by id (Billow)."""
        return cast(dict[str, Any], self._call("GET", "/api/v1/events/receipts/{receiptId}", {"receiptId": receipt_id}))

    def batcher(self, max_events: int = 500, interval: float = 1.0, on_error: Any = None) -> Batcher:
        from billow_sdk.batcher import Batcher

        return Batcher(self, max_events=max_events, interval=interval, on_error=on_error)

    # -- reads --------------------------------------------------------------------------------------------
    def query_meter(self, meter: str, *, from_: datetime | None = None, to: datetime | None = None,
                    window_size: str | None = None, window_time_zone: str | None = None,
                    subject: Iterable[str] = (), group_by: Iterable[str] = (),
                    filter_group_by: Mapping[str, str] | None = None) -> dict[str, Any]:
        params: list[tuple[str, str]] = [(k, v) for k, v in (
            ("from", from_ and _rfc3339(from_)), ("to", to and _rfc3339(to)), ("windowSize", window_size),
            ("windowTimeZone", window_time_zone)) if v]
        params += [("subject", s) for s in subject] + [("groupBy", g) for g in group_by]
        params += [(f"filterGroupBy[{k}]", v) for k, v in (filter_group_by or {}).items()]
        return cast(dict[str, Any], self._call("GET", "/api/v1/meters/{meterIdOrSlug}/query",
                                               {"meterIdOrSlug": meter}, params))

    def entitlement_value(self, subject: str, feature_key: str, *, time: datetime | None = None) -> dict[str, Any]:
        params = [("time", _rfc3339(time))] if time else []
        return cast(dict[str, Any], self._call(
            "GET", "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value",
            {"subjectIdOrKey": subject, "entitlementIdOrFeatureKey": feature_key}, params))

    def create_portal_token(self, subject: str, *, allowed_meter_slugs: Sequence[str] | None = None,
                            expires_at: datetime | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"subject": subject}
        if allowed_meter_slugs is not None:
            body["allowedMeterSlugs"] = list(allowed_meter_slugs)
        if expires_at is not None:
            body["expiresAt"] = expires_at
        # Not retried after a lost connection: the server may have minted a token already.
        return cast(dict[str, Any], self._call("POST", "/api/v1/portal/tokens", body=body, idempotent=False))

    # -- transport ----------------------------------------------------------------------------------------
    def _call(self, method: str, template: str, path_params: Mapping[str, str] | None = None,
              params: Sequence[tuple[str, str]] = (), *, body: Any = None, content_type: str = "application/json",
              idempotent: bool = True, headers: Mapping[str, str] | None = None) -> Any:
        path = template.format(**{k: urllib.parse.quote(v, safe="") for k, v in (path_params or {}).items()})
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = _to_json(body) if body is not None else None  # encoded once: every retry resends the same ids
        headers = {"Accept": "application/json", "User-Agent": "billow-sdk-python", **(headers or {})}
        if data is not None:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                req = urllib.request.Request(url, data=data, method=method, headers=headers)
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = resp.read()
                    return json.loads(payload, parse_float=Decimal) if payload else None
            except urllib.error.HTTPError as err:
                if err.code not in RETRY_STATUSES or last:
                    raise _problem(err.code, err.read(), err.reason) from None
                self._sleep(attempt, err.headers.get("Retry-After"))
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                if not idempotent or last:
                    raise BillowError(0, "Connection failed", str(getattr(err, "reason", err))) from err
                self._sleep(attempt, None)
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
        if retry_after and retry_after.isdigit():
            delay = min(float(retry_after), self.max_backoff)
        time.sleep(delay)


def _problem(status: int, payload: bytes, reason: str) -> BillowError:
    try:
        doc = json.loads(payload, parse_float=Decimal)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return BillowError(status, reason or "HTTP error", payload.decode(errors="replace"))
    return BillowError(status, str(doc.get("title", reason)), str(doc.get("detail", "")), doc)
