"""Notifications, the pure part: channel and rule documents (OpenMeter v1 shapes plus Billow's SLACK and EMAIL
channels and invoice.paid rules), balance thresholds, the delivery state machine and its retry schedule.
No I/O: the service reads and writes, the delivery adapters send."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from billow.domain import fields
from billow.errors import ValidationFailed
from billow.exact import parse_decimal
from billow.ids import is_ulid

WEBHOOK, SLACK, EMAIL = "WEBHOOK", "SLACK", "EMAIL"
CHANNEL_TYPES = (WEBHOOK, SLACK, EMAIL)
THRESHOLD, RESET = "entitlements.balance.threshold", "entitlements.reset"
INVOICE_CREATED, INVOICE_UPDATED, INVOICE_PAID = "invoice.created", "invoice.updated", "invoice.paid"
INVOICE_TYPES = (INVOICE_CREATED, INVOICE_UPDATED, INVOICE_PAID)
RULE_TYPES = (THRESHOLD, RESET, *INVOICE_TYPES)
THRESHOLD_TYPES = ("PERCENT", "NUMBER", "usage_percentage", "usage_value", "balance_value")
MAX_THRESHOLDS = 10

# Delivery states (OpenMeter's NotificationEventDeliveryStatusState).
SUCCESS, FAILED, SENDING, PENDING, RESENDING = "SUCCESS", "FAILED", "SENDING", "PENDING", "RESENDING"
# Retry schedule after a failed attempt n (1-based): the first attempt plus five retries, each delay jittered
# by +-20 % (deterministically per delivery and attempt, so two dispatchers agree and tests can predict it).
BACKOFF_S = (1, 5, 30, 120, 600)
MAX_ATTEMPTS = len(BACKOFF_S) + 1
JITTER = 0.2

_SECRET_RE = re.compile(r"^(whsec_)?[a-zA-Z0-9+/=]{32,100}$")
_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_EMAIL_RE = re.compile(r"^[^@\s<>,;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.)+[A-Za-z]{2,63}$")
# The fields only some channel types have (OpenMeter's WEBHOOK ignores the others, as it ignores any unknown field).
_TYPE_FIELDS = {"url": (WEBHOOK, SLACK), "customHeaders": (WEBHOOK,), "signingSecret": (WEBHOOK,),
                "recipients": (EMAIL,)}
_RESERVED_HEADERS = {"content-type", "content-length", "host", "webhook-id", "webhook-timestamp", "webhook-signature",
                     "transfer-encoding", "connection"}


def bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}" if field else message, [{"field": field, "message": message}])


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("", f"{what} must be a JSON object")
    return body


def _name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name.strip()) or len(name) > 256:
        raise bad("name", "required: a string of 1 to 256 characters")
    return name




def http_url(value: Any, field: str = "url") -> str:
    """An absolute http(s) URL with a host; anything else is refused at create time."""
    if not isinstance(value, str) or not value or len(value) > 2048 or any(c.isspace() for c in value):
        raise bad(field, "required: an absolute http:// or https:// URL")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a malformed port
    except ValueError:
        raise bad(field, "is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise bad(field, "only http:// and https:// URLs are supported")
    if not parts.hostname or (port is not None and not 0 < port < 65536):
        raise bad(field, "must name a host")
    try:
        if ipaddress.ip_address(parts.hostname).is_link_local:  # cloud metadata endpoints live here
            raise bad(field, "link-local addresses are not allowed")
    except ValueError:
        pass  # a host name, not an address literal
    return value


def new_signing_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def parse_channel(body: Any, *, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user-settable fields of a channel (create or full replace). A WEBHOOK without a signingSecret gets
    a new `whsec_` one (an update without one keeps the old secret)."""
    body = _object(body, "channel")
    ctype = body.get("type")
    if ctype not in CHANNEL_TYPES:
        raise bad("type", f"required, one of {', '.join(CHANNEL_TYPES)}")
    if previous is not None and previous["type"] != ctype:
        raise bad("type", "a channel's type cannot change")
    if ctype != WEBHOOK:  # Billow's own schemas: a field of another channel type is a mistake, never dropped silently
        for name, types in _TYPE_FIELDS.items():
            if name in body and ctype not in types:
                raise bad(name, f"not a field of {ctype} channels (only of {' and '.join(types)})")
    # OpenMeter's channel requests make none of these nullable (metadata alone): never a null taken for one left out.
    fields.not_null(body, ("disabled", "customHeaders", "signingSecret") if ctype == WEBHOOK else ("disabled",))
    doc: dict[str, Any] = {"type": ctype, "name": _name(body), "disabled": fields.flag(body, "disabled")}
    if (md := fields.metadata(body)) is not None:
        doc["metadata"] = md
    if ctype in (WEBHOOK, SLACK):
        doc["url"] = http_url(body.get("url"))
    if ctype == WEBHOOK:
        headers = body.get("customHeaders")
        if headers is not None:
            if not isinstance(headers, dict) or len(headers) > 50:
                raise bad("customHeaders", "must be an object of at most 50 header names to string values")
            for k, v in headers.items():
                if not _HEADER_RE.match(k) or k.lower() in _RESERVED_HEADERS:
                    raise bad("customHeaders", f"{k!r} is not an allowed header name")
                if not isinstance(v, str) or len(v) > 4096 or "\r" in v or "\n" in v:
                    raise bad("customHeaders", f"value of {k!r} must be a single-line string")
            doc["customHeaders"] = dict(headers)
        secret = body.get("signingSecret")
        if secret is None:
            secret = previous.get("signingSecret") if previous else None
            doc["signingSecret"] = secret or new_signing_secret()
        elif not isinstance(secret, str) or not _SECRET_RE.match(secret):
            raise bad("signingSecret", "must be base64 (32 to 100 characters), optionally prefixed with whsec_")
        else:
            try:
                base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except ValueError:
                raise bad("signingSecret", "is not valid base64") from None
            doc["signingSecret"] = secret
    if ctype == EMAIL:
        to = body.get("recipients")
        if not isinstance(to, list) or not 1 <= len(to) <= 50:
            raise bad("recipients", "required: a list of 1 to 50 e-mail addresses")
        for i, addr in enumerate(to):
            if not isinstance(addr, str) or len(addr) > 254 or not _EMAIL_RE.match(addr):
                raise bad(f"recipients[{i}]", "is not an e-mail address")
        doc["recipients"] = list(to)
    return doc


def parse_rule(body: Any, *, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user-settable fields of a rule; `channels` and `features` are still the references as given (the
    service resolves them)."""
    body = _object(body, "rule")
    rtype = body.get("type")
    if rtype not in RULE_TYPES:
        raise bad("type", f"required, one of {', '.join(RULE_TYPES)}")
    if previous is not None and previous["type"] != rtype:
        raise bad("type", "a rule's type cannot change")
    doc: dict[str, Any] = {"type": rtype, "name": _name(body), "disabled": fields.flag(body, "disabled")}
    if (md := fields.metadata(body)) is not None:
        doc["metadata"] = md
    channels = body.get("channels")
    if not isinstance(channels, list) or not 1 <= len(channels) <= 50:
        raise bad("channels", "required: a list of 1 to 50 channel ids")
    for i, ch in enumerate(channels):
        if not isinstance(ch, str) or not is_ulid(ch):
            raise bad(f"channels[{i}]", "must be a channel id")
    doc["channels"] = list(dict.fromkeys(channels))
    if rtype in (THRESHOLD, RESET) and body.get("features") is not None:
        feats = body["features"]
        if not isinstance(feats, list) or not 1 <= len(feats) <= 100:
            raise bad("features", "must be a list of 1 to 100 feature ids or keys")
        for i, f in enumerate(feats):
            if not isinstance(f, str) or not 1 <= len(f) <= 64:
                raise bad(f"features[{i}]", "must be a feature id or key")
        doc["features"] = list(dict.fromkeys(feats))
    if rtype == THRESHOLD:
        ths = body.get("thresholds")
        if not isinstance(ths, list) or not 1 <= len(ths) <= MAX_THRESHOLDS:
            raise bad("thresholds", f"required: a list of 1 to {MAX_THRESHOLDS} thresholds")
        out, seen = [], set()
        for i, th in enumerate(ths):
            if not isinstance(th, dict):
                raise bad(f"thresholds[{i}]", "must be an object {value, type}")
            if th.get("type") not in THRESHOLD_TYPES:
                raise bad(f"thresholds[{i}].type", f"one of {', '.join(THRESHOLD_TYPES)}")
            value = th.get("value")
            try:
                d = parse_decimal(value, int_digits=20)  # no "1_000", "５"; no Overflow on 1e999999999
            except ValueError:
                raise bad(f"thresholds[{i}].value", "must be a number below 1e20") from None
            if not d.is_finite() or d < 0 or abs(d) >= Decimal("1e20"):
                raise bad(f"thresholds[{i}].value", "must be a finite number, not negative")
            if th["type"] in ("PERCENT", "usage_percentage") and d == 0:
                raise bad(f"thresholds[{i}].value", "a percentage threshold must be greater than 0")
            key = (th["type"], d)
            if key in seen:
                raise bad(f"thresholds[{i}]", "duplicate threshold")
            seen.add(key)
            out.append({"value": d, "type": th["type"]})
        doc["thresholds"] = out
    return doc


def threshold_reached(threshold: dict[str, Any], value: dict[str, Any]) -> bool:
    """Whether an entitlement value has reached a threshold (usage at or above; a balance at or below)."""
    target = Decimal(threshold["value"])
    usage, balance = Decimal(value.get("usage", 0)), Decimal(value.get("balance", 0))
    total = Decimal(value.get("totalAvailableGrantAmount", 0))
    kind = threshold["type"]
    if kind in ("NUMBER", "usage_value"):
        return usage >= target
    if kind in ("PERCENT", "usage_percentage"):
        return total > 0 and usage * 100 >= target * total
    return total > 0 and balance <= target  # balance_value: only once there was something to burn


def threshold_key(threshold: dict[str, Any]) -> str:
    return f"{threshold['type']}:{Decimal(threshold['value']).normalize()}"


# -- delivery -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One delivery attempt as the sender saw it."""

    ok: bool
    retryable: bool
    reason: str
    status_code: int | None = None
    body: str = ""
    duration_ms: int = 0
    url: str | None = None


def classify_status(status: int) -> tuple[bool, bool]:
    """(delivered, worth retrying) for an HTTP response status: 2xx delivered; 5xx, 408 and 429 retried; other
    4xx are the receiver refusing the message, so retrying cannot help."""
    if 200 <= status < 300:
        return True, False
    return False, status >= 500 or status in (408, 429)


def retry_delay(attempts: int, seed: str) -> timedelta:
    """Delay before the next attempt after `attempts` failed ones (1-based), jittered +-JITTER."""
    base = BACKOFF_S[min(attempts, len(BACKOFF_S)) - 1]
    frac = int.from_bytes(hashlib.sha256(f"{seed}:{attempts}".encode()).digest()[:4], "big") / 0xFFFFFFFF
    return timedelta(seconds=base * (1 - JITTER + 2 * JITTER * frac))


def after_attempt(outcome: Outcome, attempts: int, now: datetime, seed: str) -> tuple[str, datetime | None]:
    """The delivery's state after its `attempts`-th attempt, and when to try again (None: never)."""
    if outcome.ok:
        return SUCCESS, None
    if outcome.retryable and attempts < MAX_ATTEMPTS:
        return PENDING, now + retry_delay(attempts, seed)
    return FAILED, None


def summary(payload: dict[str, Any]) -> str:
    """One line for humans (Slack text, e-mail subject)."""
    data, kind = payload.get("data") or {}, payload.get("type")
    if kind in (THRESHOLD, RESET):
        ent, value = data.get("entitlement") or {}, data.get("value") or {}
        subject = (data.get("subject") or {}).get("key") or ent.get("subjectKey")
        feature = (data.get("feature") or {}).get("key") or ent.get("featureKey")
        if kind == THRESHOLD:
            th = data.get("threshold") or {}
            return (f"Billow: {feature} of {subject} reached its {th.get('value')} ({th.get('type')}) threshold: "
                    f"usage {value.get('usage')}, balance {value.get('balance')}")
        return f"Billow: the usage of {feature} of {subject} was reset"
    inv = data if isinstance(data, dict) else {}
    total = (inv.get("totals") or {}).get("total")
    what = {INVOICE_CREATED: "created", INVOICE_UPDATED: "updated", INVOICE_PAID: "paid"}.get(str(kind), str(kind))
    return (f"Billow: invoice {inv.get('number') or inv.get('id')} {what} (status {inv.get('status')}"
            + (f", total {total} {inv.get('currency', '')}".rstrip() if total is not None else "") + ")")


@dataclass(frozen=True)
class Delivery:
    """The state of one event's delivery to one channel, as stored."""

    namespace: str
    event_id: str
    channel_id: str
    state: str
    reason: str
    tries: int  # attempts since the event was created or last resent
    attempts: list[dict[str, Any]]
    due_at: datetime | None  # next attempt, or (SENDING) when the claim lapses; None: never again
    updated_at: datetime
    version: int
