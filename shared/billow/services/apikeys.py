"""API keys: one namespace and a set of scopes each, stored as a SHA-256 of the secret (the secret is 256 random
bits, so a slow hash adds nothing), shown once at creation. `Authorization: Bearer bk_<id>_<secret>`.

Scopes: `ingest` (POST /api/v1/events), `read` (GET, and POST of a meter query), `admin` (everything, keys
included). The namespace of every request comes from its key, never from the request."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from billow.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from billow.ids import new_id
from billow.timeutil import format_rfc3339

SCOPES = ("ingest", "read", "admin")
__all__ = ["Forbidden", "Principal", "Unauthorized", "authenticate", "authorize", "create_key", "required_scope",
           "revoke_key"]
TOKEN_RE = re.compile(r"^bk_([0-9A-HJKMNP-TV-Z]{26})_([A-Za-z0-9_-]{43})$")
NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Routes anyone may call: liveness/readiness, the API description and the customer portal's static page (its
# data comes from /api/v1/portal/..., which needs a portal token).
PUBLIC = {("GET", "/"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/api/v1/openapi.json"),
          ("GET", "/portal"), ("GET", "/portal/portal.js"), ("GET", "/portal/portal.css"),
          ("GET", "/console"), ("GET", "/console/console.js"), ("GET", "/console/console.css"),
          ("GET", "/api/docs"), ("GET", "/api/docs/redoc.standalone.js"), ("GET", "/api/docs/init.js"),
          ("GET", "/api/docs/LICENSE"), ("GET", "/api/docs/redoc.standalone.js.LICENSE.txt"),
          ("POST", "/api/v1/apps/stripe/webhook")}  # Stripe signs its webhooks; it holds no API key

_APP_WEBHOOK = re.compile(r"/api/v1/apps/[^/]+/stripe/webhook")  # an installed Stripe app's webhook: signed too


@dataclass(frozen=True)
class Principal:
    key_id: str
    namespace: str
    scopes: frozenset[str]

    def context(self) -> dict[str, str]:
        """What an API Gateway Lambda authorizer hands to the handlers (string values only)."""
        return {"keyId": self.key_id, "namespace": self.namespace, "scopes": ",".join(sorted(self.scopes))}

    @classmethod
    def from_context(cls, ctx: dict[str, Any]) -> Principal:
        return cls(str(ctx["keyId"]), str(ctx["namespace"]), frozenset(str(ctx.get("scopes", "")).split(",")) - {""})


class KeyStore(Protocol):
    def put_key(self, doc: dict[str, Any], key_hash: str) -> None: ...

    def get_key(self, key_id: str) -> tuple[dict[str, Any], str] | None: ...

    def list_keys(self, namespace: str | None) -> list[dict[str, Any]]: ...


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> tuple[str, str, str]:
    """(id, `<prefix>_<id>_<secret>` shown once, SHA-256 of the secret to store)."""
    rid, secret = new_id(), secrets.token_urlsafe(32)
    return rid, f"{prefix}_{rid}_{secret}", _digest(secret)


def bearer(authorization: str, missing: str) -> str:
    """The token of an `Authorization: Bearer <token>` header; Unauthorized(`missing`) without one."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(missing)
    return token.strip()


def match_secret[T](pattern: re.Pattern[str], token: str, lookup: Callable[[str], T | None],
                    stored_digest: Callable[[T], str]) -> T | None:
    """The stored record of `token` (`<prefix>_<id>_<secret>`, `pattern` capturing id and secret) if the SHA-256 of
    its secret equals the stored one. The same constant-time comparison runs whether or not the id exists."""
    m = pattern.match(token)
    found = lookup(m.group(1)) if m else None
    digest = stored_digest(found) if found is not None else _digest("no such key")
    same = hmac.compare_digest(digest, _digest(m.group(2) if m else ""))
    return found if same and m is not None else None


def create_key(namespace: str, name: str, scopes: list[str], *, store: KeyStore, now: datetime) -> tuple[str, dict[str, Any]]:
    """A new key: (the token, shown once; the stored record without any secret)."""
    if not NAMESPACE_RE.match(namespace):
        raise ValidationFailed("namespace: 1 to 63 of a-z, 0-9, _ and -", [{"field": "namespace", "message": "invalid"}])
    if not isinstance(name, str) or not name.strip() or len(name) > 256:
        raise ValidationFailed("name: required, 1 to 256 characters", [{"field": "name", "message": "required"}])
    if not scopes or not isinstance(scopes, list) or any(s not in SCOPES for s in scopes):
        raise ValidationFailed(f"scopes: a non-empty list of {', '.join(SCOPES)}",
                               [{"field": "scopes", "message": f"one or more of {', '.join(SCOPES)}"}])
    key_id, token, digest = new_secret("bk")
    doc = {"id": key_id, "namespace": namespace, "name": name, "scopes": sorted(set(scopes)),
           "createdAt": format_rfc3339(now), "prefix": token[:34]}
    store.put_key(doc, digest)
    return token, doc


def revoke_key(key_id: str, *, store: KeyStore, now: datetime, namespace: str | None = None) -> dict[str, Any]:
    found = store.get_key(key_id)
    if found is None or (namespace is not None and found[0]["namespace"] != namespace):
        raise NotFound(f"API key {key_id!r} not found")
    doc, digest = found
    if not doc.get("revokedAt"):
        doc["revokedAt"] = format_rfc3339(now)
        store.put_key(doc, digest)
    return doc


def authenticate(authorization: str, *, store: KeyStore) -> Principal:
    token = bearer(authorization, "an API key is required: Authorization: Bearer bk_...")
    found = match_secret(TOKEN_RE, token, store.get_key, lambda f: f[1])
    if found is None or found[0].get("revokedAt"):
        raise Unauthorized("the API key is not valid (unknown, malformed or revoked)")
    doc = found[0]
    return Principal(doc["id"], doc["namespace"], frozenset(doc["scopes"]))


def required_scope(method: str, path: str) -> str | None:
    """The scope a route needs; None for public routes."""
    method = method.upper()
    path = path.rstrip("/") or "/"
    if (method, path) in PUBLIC or (method == "POST" and _APP_WEBHOOK.fullmatch(path)):
        return None
    if path.startswith(("/api/v1/admin/", "/api/v1/portal/tokens")):  # keys; portal tokens (made, listed, invalidated)
        return "admin"
    if path == "/api/v1/events" and method == "POST":
        return "ingest"
    if method in ("GET", "HEAD") or (method == "POST" and re.fullmatch(r"/api/v1/meters/[^/]+/query", path)):
        return "read"
    return "admin"


def authorize(principal: Principal, method: str, path: str) -> None:
    need = required_scope(method, path)
    if need is None or "admin" in principal.scopes or need in principal.scopes:
        return
    raise Forbidden(f"this API key's scopes ({', '.join(sorted(principal.scopes))}) do not allow {method} {path}; "
                    f"it needs {need!r}")
