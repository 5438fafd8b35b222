"""Consumer portal (OpenMeter v1 `/api/v1/portal/...`): tokens that let one end customer read its own usage.

A portal token `bp_<id>_<secret>` acts for one namespace and ONE subject (and the customer whose
`usageAttribution.subjectKeys` lists it), optionally only for some meters (`allowedMeterSlugs`; empty or absent: all).
It is stored as the SHA-256 of its secret, like an API key, shown once, expires (OpenMeter's default
`portal.tokenExpiration` of 1 hour; Billow also takes an `expiresAt` up to 30 days ahead) and can be invalidated by id
or by subject. Making, listing and invalidating tokens needs an API key (admin scope); the portal API needs a portal
token and nothing else, and a portal token calls nothing but the portal API (`is_portal_api`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from billow.domain import fields
from billow.errors import BillowError, Forbidden, NotFound, Unauthorized, ValidationFailed
from billow.services import apikeys, pages
from billow.timeutil import format_rfc3339, parse_rfc3339

if TYPE_CHECKING:  # the portal API's use-cases import these when called: authentication (the authorizer, every
    # handler's as_caller) stays as light as the API keys'
    from billow.ports import MetaStore, UsageStore
    from billow.services.balances import BalanceCache
    from billow.services.entitlements import EntitlementStore

PREFIX = "bp_"
TOKEN_RE = re.compile(r"^bp_([0-9A-HJKMNP-TV-Z]{26})_([A-Za-z0-9_-]{43})$")
DEFAULT_TTL = timedelta(hours=1)  # OpenMeter: portal.tokenExpiration defaults to 1h
MAX_TTL = timedelta(days=30)
MAX_METERS = 100
MAX_SUBJECT = 256
_MISSING = "a portal token is required: Authorization: Bearer bp_..."


class PortalStore(Protocol):
    def put_token(self, namespace: str, doc: dict[str, Any], token_hash: str) -> None: ...

    def get_token(self, token_id: str) -> tuple[str, dict[str, Any], str] | None: ...

    def list_tokens(self, namespace: str, limit: int) -> list[dict[str, Any]]: ...

    def invalidate(self, namespace: str, *, token_id: str | None, subject: str | None, at: datetime) -> int: ...

    def exists(self, namespace: str, token_id: str) -> bool: ...


_bad = ValidationFailed.at


# -- tokens (API key, admin) ---------------------------------------------------------------------------------
def _expired(doc: dict[str, Any], now: datetime) -> bool:
    return bool(doc.get("invalidatedAt")) or now >= parse_rfc3339(doc["expiresAt"], "expiresAt")


def token_json(doc: dict[str, Any], now: datetime, token: str | None = None) -> dict[str, Any]:
    """OpenMeter's PortalToken; `token` only at creation. Billow adds `invalidatedAt` once invalidated."""
    out = {"id": doc["id"], "subject": doc["subject"], "expiresAt": doc["expiresAt"], "expired": _expired(doc, now),
           "createdAt": doc["createdAt"]}
    if doc.get("allowedMeterSlugs"):
        out["allowedMeterSlugs"] = doc["allowedMeterSlugs"]
    if doc.get("invalidatedAt"):
        out["invalidatedAt"] = doc["invalidatedAt"]
    if token is not None:
        out["token"] = token
    return out


def create_token(namespace: str, body: Any, *, store: PortalStore, meta: MetaStore, now: datetime) -> dict[str, Any]:
    """A new token for `body.subject` (the read-only fields of PortalToken, if sent, are ignored)."""
    if not isinstance(body, dict):
        raise _bad("body", "must be a PortalToken object {subject, allowedMeterSlugs}")
    subject = body.get("subject")
    if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT or "\x00" in subject:
        raise _bad("subject", f"required, a subject key of 1 to {MAX_SUBJECT} characters (no NUL)")
    # OpenMeter's PortalToken: none nullable (allowedMeterSlugs left out: every meter; the read-only ones ignored)
    fields.not_null(body, ("allowedMeterSlugs", "expiresAt", "id", "createdAt", "expired", "token"))
    slugs = _allowed_meter_slugs(namespace, body.get("allowedMeterSlugs"), meta)
    expires = _expiry(body.get("expiresAt"), now)
    token_id, token, digest = apikeys.new_secret(PREFIX.rstrip("_"))
    doc: dict[str, Any] = {"id": token_id, "subject": subject, "createdAt": format_rfc3339(now),
                           "expiresAt": format_rfc3339(expires)}
    if slugs:
        doc["allowedMeterSlugs"] = slugs
    store.put_token(namespace, doc, digest)
    return token_json(doc, now, token)


def _allowed_meter_slugs(namespace: str, slugs: Any, meta: MetaStore) -> Any:
    """`allowedMeterSlugs` as sent (None: every meter), without repeats; each must name a live meter."""
    if slugs is None:
        return None
    if not isinstance(slugs, list) or len(slugs) > MAX_METERS or not all(isinstance(s, str) for s in slugs):
        raise _bad("allowedMeterSlugs", f"a list of at most {MAX_METERS} meter slugs")
    from billow.domain.meters import SLUG_RE

    slugs = list(dict.fromkeys(slugs))
    live = {m.slug for m in meta.list_meters(namespace)}
    unknown = [s for s in slugs if not SLUG_RE.match(s) or s not in live]
    if unknown:
        raise _bad("allowedMeterSlugs", f"no such meter: {', '.join(repr(s) for s in unknown[:5])}")
    return slugs


def _expiry(raw: Any, now: datetime) -> datetime:
    """When a new token expires: DEFAULT_TTL from now, or Billow's `expiresAt` (OpenMeter: fixed by configuration),
    in the future and at most MAX_TTL ahead."""
    if raw is None:
        return now + DEFAULT_TTL
    expires = parse_rfc3339(raw if isinstance(raw, str) else "", "expiresAt")
    if not now < expires <= now + MAX_TTL:
        raise _bad("expiresAt", f"must be in the future and at most {MAX_TTL.days} days ahead")
    return expires


def list_tokens(namespace: str, qs: dict[str, list[str]], *, store: PortalStore, now: datetime) -> list[dict[str, Any]]:
    """OpenMeter's listPortalTokens: `limit` 1..100, default 25."""
    return [token_json(d, now) for d in store.list_tokens(namespace, pages.limit(qs, default=25, maximum=100))]


def invalidate(namespace: str, body: Any, *, store: PortalStore, now: datetime) -> int:
    """Invalidate the token with `body.id` and/or every token of `body.subject`; how many were still valid."""
    if not isinstance(body, dict):
        raise _bad("body", "must be an object {id} or {subject}")
    fields.not_null(body, ("id", "subject"))
    token_id, subject = body.get("id"), body.get("subject")
    for name, value in (("id", token_id), ("subject", subject)):
        if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_SUBJECT
                                  or "\x00" in value):
            raise _bad(name, f"must be a string of 1 to {MAX_SUBJECT} characters (no NUL)")
    if token_id is None and subject is None:
        raise _bad("body", "give the id of a token or a subject")
    if token_id is not None and not store.exists(namespace, token_id):
        raise NotFound(f"portal token {token_id!r} not found")
    return store.invalidate(namespace, token_id=token_id, subject=subject, at=now)


# -- authentication -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PortalPrincipal:
    token_id: str
    namespace: str
    subject: str

    def context(self) -> dict[str, str]:
        """What the Lambda authorizer hands to the handlers (string values only)."""
        return {"portalTokenId": self.token_id, "namespace": self.namespace, "subject": self.subject}


def _live(found: tuple[str, dict[str, Any], str] | None, now: datetime) -> tuple[str, dict[str, Any]]:
    if found is None:
        raise Unauthorized("the portal token is not valid (unknown, malformed or tampered with)")
    namespace, doc, _ = found
    if doc.get("invalidatedAt"):
        raise Unauthorized(f"the portal token was invalidated at {doc['invalidatedAt']}")
    if _expired(doc, now):
        raise Unauthorized(f"the portal token expired at {doc['expiresAt']}")
    return namespace, doc


def is_portal_bearer(authorization: str) -> bool:
    scheme, _, token = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and token.strip().startswith(PREFIX)


def authenticate(authorization: str, *, store: PortalStore, now: datetime) -> PortalPrincipal:
    token = apikeys.bearer(authorization, _MISSING)
    namespace, doc = _live(apikeys.match_secret(TOKEN_RE, token, store.get_token, lambda f: f[2]), now)
    return PortalPrincipal(doc["id"], namespace, doc["subject"])


def authenticate_bearer(authorization: str, *, keys: apikeys.KeyStore, tokens: PortalStore,
                        now: datetime) -> tuple[str, dict[str, str]]:
    """(who, for rate limits; the authorizer context) of a Bearer API key or portal token. Unauthorized if neither."""
    if is_portal_bearer(authorization):
        p = authenticate(authorization, store=tokens, now=now)
        return p.token_id, p.context()
    k = apikeys.authenticate(authorization, store=keys)
    return k.key_id, k.context()


def is_portal_context(ctx: dict[str, Any]) -> bool:
    return "portalTokenId" in ctx


def is_portal_api(path: str) -> bool:
    """The routes a portal token may call (and nothing else may): /api/v1/portal/... but for the token admin."""
    parts = path.rstrip("/").split("/")
    return len(parts) > 4 and parts[:4] == ["", "api", "v1", "portal"] and parts[4] != "tokens"


def admit(ctx: dict[str, Any], method: str, path: str) -> str:
    """The namespace a portal token (authorizer context) acts in on `path`; Forbidden outside the portal API (and
    the public routes)."""
    if not is_portal_api(path) and apikeys.required_scope(method, path) is not None:
        raise Forbidden("a portal token can only call the portal API (/api/v1/portal/...)")
    return str(ctx["namespace"])


# -- the portal API ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Session:
    """A portal request's live token, read again per request: an invalidation or the expiry takes effect at once,
    even while API Gateway still caches the authorizer's answer."""

    namespace: str
    token_id: str
    subject: str
    allowed: tuple[str, ...]  # empty: every meter
    expires_at: str

    def may_read(self, slug: str) -> bool:
        return not self.allowed or slug in self.allowed


def session(ctx: dict[str, Any], *, store: PortalStore, now: datetime) -> Session:
    found = store.get_token(str(ctx.get("portalTokenId", "")))
    namespace, doc = _live(found, now)
    if namespace != ctx.get("namespace"):
        raise Unauthorized("the portal token is not valid (unknown, malformed or tampered with)")
    return Session(namespace, doc["id"], doc["subject"], tuple(doc.get("allowedMeterSlugs") or ()), doc["expiresAt"])


def _customer(s: Session, meta: MetaStore) -> dict[str, Any] | None:
    cid = meta.customers_for_subjects(s.namespace, [s.subject]).get(s.subject)
    return meta.get_customer(s.namespace, cid) if cid else None


def unit(meter: Any) -> str:
    """What a meter's values count, for the portal's charts: the meter's `metadata.unit` if set, else "events" for
    COUNT and the last name of the valueProperty ($.usage.input_tokens -> "input tokens")."""
    given = (meter.metadata or {}).get("unit")
    if isinstance(given, str) and given.strip():
        return given.strip()[:40]
    if meter.aggregation == "COUNT" or not meter.value_property:
        return "events"
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", meter.value_property)
    return names[-1].replace("_", " ") if names else ""


def me(s: Session, *, meta: MetaStore) -> dict[str, Any]:
    """Who the token is for and what it may read (Billow's extension)."""
    cust = _customer(s, meta)
    meters = [{"slug": m.slug, "name": m.name, "description": m.description, "aggregation": m.aggregation,
               "unit": unit(m), "groupBy": list(m.group_by)}
              for m in meta.list_meters(s.namespace) if s.may_read(m.slug)]
    return {"subject": s.subject, "customer": {k: cust.get(k) for k in ("id", "key", "name")} if cust else None,
            "allowedMeterSlugs": list(s.allowed) or None, "meters": meters, "expiresAt": s.expires_at}


def query(s: Session, slug: str, qs: dict[str, list[str]], *, meta: MetaStore, usage: UsageStore) -> dict[str, Any]:
    """The meter query of the token's subject only: another subject or customer asked for is 403, never data."""
    if not s.may_read(slug):
        raise Forbidden(f"this portal token may not read meter {slug!r}")
    if any(v != s.subject for v in qs.get("subject", [])):
        raise Forbidden("a portal token reads only its own subject's usage")
    if qs.get("filterCustomerId"):
        cust = _customer(s, meta)
        own = {cust["id"], cust.get("key")} - {None} if cust else set()
        if any(v not in own for v in qs["filterCustomerId"]):
            raise Forbidden("a portal token reads only its own customer's usage")
    from billow.services.query import params_from_query_string, query_meter

    p = params_from_query_string(qs)
    p.subjects = [s.subject]
    return query_meter(s.namespace, slug, p, meta=meta, usage=usage)


ENTITLEMENT_FIELDS = ("id", "type", "featureId", "featureKey", "isSoftLimit", "usagePeriod", "currentUsagePeriod",
                      "lastReset", "config")


def entitlements(s: Session, *, store: EntitlementStore, meta: MetaStore, usage: UsageStore, now: datetime,
                 cache: BalanceCache | None = None) -> list[dict[str, Any]]:
    """The live entitlements of the subject (and of the other subjects of its customer) with their current values. With allowedMeterSlugs, a metered entitlement on
    another meter is left out (its value would show that meter's usage)."""
    from billow.services import balances
    from billow.services.entitlements import party_subject_keys

    out = []
    # The customer's entitlements, whichever of its subjects they were made on (one billable party).
    for doc in store.list_entitlements(s.namespace, party_subject_keys(s.namespace, [s.subject], meta)):
        feature = store.get_feature(s.namespace, doc["featureId"], include_archived=True) or {}
        if doc["type"] == "metered" and not s.may_read(str(feature.get("meterSlug"))):
            continue
        item = {k: v for k, v in balances.entitlement_json(s.namespace, doc, store=store, now=now).items()
                if k in ENTITLEMENT_FIELDS}
        item["featureName"] = feature.get("name") or doc["featureKey"]
        try:
            item["value"] = balances.value(s.namespace, [s.subject], doc["id"], None, store=store, meta=meta,
                                           usage=usage, now=now, cache=cache)
        except BillowError as exc:  # e.g. the feature's meter was deleted: show the entitlement, say why no value
            item["value"], item["valueError"] = None, exc.detail
        out.append(item)
    return out


SHOWN = ("issued", "payment_processing", "overdue", "paid", "uncollectible", "voided")  # what a customer sees


def invoices(s: Session, *, meta: MetaStore, billing: Any) -> list[dict[str, Any]]:
    """The billing history of the token's customer, newest first: issued invoices only (drafts and pending lines
    are the supplier's business), with what a customer needs to see; a subject without a customer has none."""
    cust = _customer(s, meta)
    if cust is None:
        return []
    docs = billing.list_invoices(s.namespace, customer_ids=[cust["id"]], statuses=list(SHOWN))
    keep = ("id", "number", "currency", "status", "issuedAt", "dueAt", "period", "totals")
    return [{k: d.get(k) for k in keep} for d in reversed(docs)]


def invoice(s: Session, invoice_id: str, *, meta: MetaStore, billing: Any) -> dict[str, Any]:
    """One invoice of the token's customer that the portal lists (issued or later); another customer's invoice, a
    draft or an unknown id is the same 404: a portal token learns nothing of what it may not read."""
    cust = _customer(s, meta)
    doc = billing.get_invoice(s.namespace, invoice_id) if cust is not None else None
    if cust is None or doc is None or doc.get("deletedAt") or (doc.get("customer") or {}).get("id") != cust["id"] \
            or doc.get("status") not in SHOWN:
        raise NotFound(f"invoice {invoice_id!r} not found")
    return dict(doc)
