"""HTTP edge helpers shared by the API Gateway handlers: problem+json, exact JSON bodies, query strings."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, MutableMapping
from typing import Any
from urllib.parse import unquote, unquote_plus

from billow import jsonx
from billow.errors import BillowError, ValidationFailed, problem

log = logging.getLogger("billow.web")

PROBLEM = "application/problem+json"
_KEPT = "billow.json_body"  # json_body's answer for a request, in that request's state (kept_in)
JSON = "application/json"


def response(status: int, body: Any = None, content_type: str = JSON, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) response."""
    out: dict[str, Any] = {"statusCode": status, "headers": {**(headers or {})}, "isBase64Encoded": False}
    if body is None:
        out["body"] = ""
    else:
        out["headers"]["Content-Type"] = content_type
        out["body"] = body if isinstance(body, str) else jsonx.dumps(body)
    return out


def problem_response(exc: BillowError, path: str) -> dict[str, Any]:
    out = response(exc.status, problem(exc.status, exc.title, exc.detail, path, exc.extensions), PROBLEM)
    if exc.status == 503:  # a dependency is down: tell the client when to resend
        out["headers"]["Retry-After"] = "1"
    return out


def internal_error(path: str) -> dict[str, Any]:
    log.exception("unhandled error on %s", path)
    return response(500, problem(500, "Internal Server Error", "unexpected error; it was logged", path), PROBLEM)


def body_text(event: dict[str, Any]) -> str:
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(raw).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise ValidationFailed("request body is not valid UTF-8", [{"field": "body", "message": "not UTF-8"}]) from None
    return raw


def json_body(event: dict[str, Any], surrogates: list[dict[str, Any]] | None = None, *,
              kept_in: MutableMapping[str, Any] | None = None) -> Any:
    """The request's JSON document. A string holding a lone UTF-16 surrogate is refused (400 naming where); given a
    `surrogates` list, those errors are appended to it instead, so that an event batch can list them beside its
    events' other problems (the caller must then refuse the whole body).
    Given `kept_in`, the request's own state (the API resolver's per-request context), the body is parsed once a
    request: the first call keeps its answer there, the document or the 400, and every later call for the same event
    gives that answer again (not with `surrogates`: the API's bodies only)."""
    if kept_in is not None:
        kept = kept_in.get(_KEPT)
        if kept is None or kept[0] is not event:  # not this event's (outside a resolver's request: never stale)
            try:
                kept = (event, json_body(event), None)
            except ValidationFailed as exc:
                kept = (event, None, exc)
            kept_in[_KEPT] = kept
        if kept[2] is not None:
            raise kept[2].with_traceback(None)
        return kept[1]
    text = body_text(event)
    if not text.strip():
        raise ValidationFailed("request body is empty; a JSON document is required", [{"field": "body", "message": "empty"}])
    try:
        doc = jsonx.loads(text)
    except (jsonx.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ValidationFailed(f"malformed JSON: {exc}", [{"field": "body", "message": "malformed JSON"}]) from None
    except ArithmeticError:  # decimal.InvalidOperation: a number's exponent beyond Decimal's own (1e99999999999999999999)
        raise ValidationFailed("a JSON number in the body is out of range (its exponent is beyond any decimal)",
                               [{"field": "body", "message": "number out of range"}]) from None
    bad = jsonx.lone_surrogates(text, doc)
    if bad:  # no store, broker or response can hold one: refused here, for every operation
        errors = [_located(path, "contains a lone UTF-16 surrogate (not valid Unicode)", doc) for path in bad]
        if surrogates is not None:
            surrogates.extend(errors)
            return doc
        where = f"event {errors[0]['index']}: " if "index" in errors[0] else ""
        raise ValidationFailed(f"{where}{errors[0]['field'] or 'body'}: a string holds a lone UTF-16 surrogate, which "
                               "is not valid Unicode", errors)
    if surrogates is None and (nul := jsonx.nul_characters(text, doc)):  # an event batch has its own rules (events.py)
        raise ValidationFailed(f"{nul[0] or 'body'}: {NUL_MESSAGE} (written \\u0000 in JSON)",
                               [_located(path, NUL_MESSAGE, doc) for path in nul])
    return doc


def optional_json_body(event: dict[str, Any], *, kept_in: MutableMapping[str, Any] | None = None) -> Any:
    """The JSON document of a request whose body may be left out (an app install, a usage reset, a portal session):
    None without one. A body that is there must be a JSON object: `null` is refused (400 naming the body) as any
    other non-object is, not taken for a body left out (the operations' schemas require an object)."""
    raw = event.get("body")
    if not raw or not str(raw).strip():
        return None
    doc = json_body(event, kept_in=kept_in)
    if doc is None:
        raise ValidationFailed("body: must be a JSON object, or left out; null is not one",
                               [{"field": "body", "message": "must be an object, not null"}])
    return doc


# PostgreSQL (the meta store in AWS) cannot store U+0000 in text; SQLite can. Refused in every request body (but an
# event batch's, whose own rules refuse it where it is stored), path and query parameter, so both stores answer alike.
NUL_MESSAGE = "must not contain NUL (U+0000)"


def _located(path: str, message: str, doc: Any) -> dict[str, Any]:
    """A validation error at a body path; in an array body `doc` (an event batch) the element's index is its own key.
    An object's key may itself begin with "[" (a hostile one: `{"[x\\u0000": 1}`): only an array's path is split."""
    if isinstance(doc, list) and path.startswith("["):
        index, _, rest = path[1:].partition("]")
        return {"index": int(index), "field": rest.removeprefix("."), "message": message}
    return {"field": path, "message": message}


def header(event: dict[str, Any], name: str) -> str:
    headers = event.get("headers") or {}
    for k, v in headers.items():
        if k.lower() == name:
            return v or ""
    return ""


def query_multi(event: dict[str, Any]) -> dict[str, list[str]]:
    """Repeated parameters kept apart (API Gateway joins them with commas in queryStringParameters)."""
    raw = event.get("rawQueryString")
    if raw is not None:
        return _parse_query(raw)
    return {k: [v] for k, v in (event.get("queryStringParameters") or {}).items()}


def _parse_query(raw: str) -> dict[str, list[str]]:
    """parse_qs (blank values kept), except that a percent-escape that is not UTF-8 (e.g. %ED%A0%80, a lone UTF-16
    surrogate) is a 400 naming its parameter instead of a silent U+FFFD (or a 500 further in)."""
    out: dict[str, list[str]] = {}
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        try:
            key = unquote_plus(name, errors="strict")
        except UnicodeDecodeError:
            key = unquote_plus(name, errors="backslashreplace")
            raise ValidationFailed(f"query parameter {key[:64]!r}: its name is not valid UTF-8",
                                   [{"field": key[:256], "message": "name is not valid UTF-8"}]) from None
        try:
            out.setdefault(key, []).append(unquote_plus(value, errors="strict"))
        except UnicodeDecodeError:
            raise ValidationFailed(f"{key[:64]}: not valid UTF-8 (percent-escapes must encode UTF-8 characters)",
                                   [{"field": key, "message": "not valid UTF-8"}]) from None
        if "\x00" in key or "\x00" in out[key][-1]:
            shown = key.replace("\x00", "\\u0000")
            raise ValidationFailed(f"query parameter '{shown[:64]}': {NUL_MESSAGE} (%00)",
                                   [{"field": shown[:256], "message": NUL_MESSAGE}])
    return out


def path_param(value: str) -> str:
    return unquote(value)


def refuse_nul_in_path(path: str) -> None:
    """A path segment holding NUL (%00) is a 400 naming its parameter as the served document does."""
    if "%00" not in path and "\x00" not in path:
        return
    segments = path.split("/")
    for i, segment in enumerate(segments):
        if "\x00" in unquote(segment):
            name = _path_parameter(segments, i)
            raise ValidationFailed(f"{name}: {NUL_MESSAGE} (%00)", [{"field": name, "message": NUL_MESSAGE}])


def _path_parameter(segments: list[str], index: int) -> str:
    from billow.web.openapi import document  # only on this rare path: the document is not read per request

    for template in jsonx.loads(document())["paths"]:
        parts = template.split("/")
        if len(parts) == len(segments) and all(p == s or p.startswith("{") for p, s in zip(parts, segments, strict=True)):
            if parts[index].startswith("{"):
                return parts[index].strip("{}")
    return "path"


def guarded(path: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except BillowError as exc:
        return problem_response(exc, path)
    except Exception:
        return internal_error(path)


def wants_csv(event: dict[str, Any]) -> bool:
    accept = header(event, "accept")
    return "text/csv" in accept and "application/json" not in accept.split(",")[0]


def as_caller(event: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Serve `fn` as the caller of `event`: the API key's namespace (from the authorizer context that API Gateway,
    or the embedded host, put on the event) and its scopes for this route. With auth off, the configured
    namespace. A portal token acts in its namespace on the portal API only, which nothing else may call, auth off
    or on. Auth failures are problem+json 401/403."""
    from billow.bootstrap import container
    from billow.services import portal
    from billow.services.apikeys import Principal, Unauthorized, authorize, required_scope

    http = (event.get("requestContext") or {}).get("http") or {}
    method, path = str(http.get("method", "GET")), str(event.get("rawPath") or http.get("path") or "/")
    c = container()
    ctx = ((event.get("requestContext") or {}).get("authorizer") or {}).get("lambda")
    try:
        if ctx and portal.is_portal_context(ctx):
            namespace: str | None = portal.admit(ctx, method, path)
        elif portal.is_portal_api(path):
            raise Unauthorized("the portal API needs a portal token (an API key is not one): Authorization: Bearer bp_...")
        elif ctx:
            principal = Principal.from_context(ctx)
            authorize(principal, method, path)
            namespace = principal.namespace
        elif c.settings.auth == "off":
            namespace = None
        elif required_scope(method, path) is not None:
            raise Unauthorized("an API key is required: Authorization: Bearer bk_...")
        else:
            namespace = None
    except BillowError as exc:
        return problem_response(exc, path)
    with c.acting_for(namespace):
        return fn()
