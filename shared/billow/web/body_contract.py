"""Request bodies checked against the bounds the served OpenAPI document gives their fields: a string's maxLength,
minLength, pattern and enum, a number's minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf and enum
(numbers and booleans compared as JSON values: true is not 1), an array's maxItems and minItems. (OpenMeter's document
has no number or boolean enum and no multipleOf today; they are checked for when it has.) OpenMeter validates every request against its document (kin-openapi), so a value
outside them is a 400 there; here too, a 400 naming each field (`billingAddress.city`, `rateCards[0].key`, `[1].key`
in an array body), before the route runs. Types, formats, required fields and nulls stay the services' (they say
more than a schema can), and so do ids (ULID below). A oneOf/anyOf holds its value to the one branch it can be: the
discriminator's, the only one of its JSON type, or the only object branch whose required fields it has (a
subscription's create: `plan` or `customPlan`; a notification channel's SLACK and EMAIL bodies have Billow's schemas,
a discriminated branch beside OpenMeter's WEBHOOK, scripts/billow_operations.yaml). The API handler runs `check`
before every route."""

from __future__ import annotations

import decimal
import json
import re
from decimal import Decimal
from functools import cache
from typing import Any, Final

from billow.errors import ValidationFailed
from billow.web.openapi import document

_METHODS: Final = ("post", "put", "patch")


@cache
def _doc() -> dict[str, Any]:
    """The served document."""
    doc: dict[str, Any] = json.loads(document())
    return doc


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        _, _, kind, name = node["$ref"].split("/", 3)
        node = _doc()["components"][kind][name]
    return node


@cache
def _routes() -> tuple[tuple[str, re.Pattern[str], dict[str, Any]], ...]:
    """(method, path pattern, JSON body schema) of each operation with a JSON body; a path with more literal segments
    first (`/customers/{id}/apps` before `/customers/{id}/{x}`), so the most specific one matches."""
    out = []
    for path, item in _doc()["paths"].items():
        for method in _METHODS:
            schema = ((item.get(method) or {}).get("requestBody") or {}).get("content", {}).get("application/json", {})
            if "schema" in schema:
                segments = path.strip("/").split("/")
                pattern = "/".join("[^/]+" if s.startswith("{") else re.escape(s) for s in segments)
                literal = sum(not s.startswith("{") for s in segments)
                out.append((literal, method.upper(), re.compile(f"/{pattern}"), schema["schema"]))
    out.sort(key=lambda r: -r[0])
    return tuple((m, p, s) for _, m, p, s in out)


def body_schema(method: str, path: str) -> dict[str, Any] | None:
    """The JSON body schema of the operation serving `method` `path`, if the document gives one."""
    for m, pattern, schema in _routes():
        if m == method and pattern.fullmatch(path):
            return schema
    return None


@cache
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # an ECMA-only construct: not checked here
        return None


# OpenMeter's ULID pattern: where it asks for an id, Billow takes an id or what names it (a customer's key, an app's
# type such as "sandbox"), and the look-up answers for a wrong one (404 or 400 naming the field).
ULID: Final = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"
# multipleOf's remainder: exact while the quotient has at most 120 digits (else InvalidOperation), any exponent.
_QUOTIENT: Final = decimal.Context(prec=120, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN,
                                   traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])
_JSON_TYPES: Final = {"string": str, "array": list, "object": dict, "boolean": bool}


def _branch(node: dict[str, Any], options: list[dict[str, Any]], value: Any) -> list[dict[str, Any]]:
    """The branches of a oneOf/anyOf `value` is held to: the discriminator's, the only one of its JSON type, or the
    only object branch whose required fields it has (none when that is ambiguous: then nothing is checked)."""
    disc = node.get("discriminator")
    if disc and isinstance(value, dict):
        tag = value.get(disc["propertyName"])
        ref = (disc.get("mapping") or {}).get(tag) if isinstance(tag, str) else None
        return [_resolve({"$ref": ref})] if ref else []
    resolved = [_resolve(o) for o in options]
    fits = [o for o in resolved if isinstance(value, _JSON_TYPES.get(o.get("type", ""), ()))
            and not (isinstance(value, bool) and o.get("type") != "boolean")]
    if len(fits) > 1 and isinstance(value, dict):  # a value without a branch's required field cannot be that branch
        fits = [o for o in fits if all(k in value for k in _required(o))]
    return fits if len(fits) == 1 else []


def _required(node: dict[str, Any]) -> list[str]:
    return [*node.get("required", []), *(k for sub in node.get("allOf", []) for k in _required(_resolve(sub)))]


def _number(node: dict[str, Any], value: int | Decimal, field: str, problems: list[dict[str, str]]) -> None:
    """minimum/maximum, and OpenAPI 3.0's boolean exclusiveMinimum/exclusiveMaximum on them (or 3.1's numbers)."""
    for bound, exclusive, below in (("minimum", "exclusiveMinimum", True), ("maximum", "exclusiveMaximum", False)):
        limits = []
        if isinstance(node.get(bound), (int, float)):
            limits.append((Decimal(str(node[bound])), node.get(exclusive) is True))
        if isinstance(node.get(exclusive), (int, float)) and not isinstance(node[exclusive], bool):
            limits.append((Decimal(str(node[exclusive])), True))
        for limit, strict in limits:
            outside = (value <= limit if strict else value < limit) if below else (value >= limit if strict else value > limit)
            if outside:
                word = ("greater than" if strict else "at least") if below else ("less than" if strict else "at most")
                problems.append({"field": field, "message": f"must be {word} {limit}"})


def _name(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _walk(node: dict[str, Any], value: Any, at: str, problems: list[dict[str, str]]) -> None:
    node = _resolve(node)
    for sub in node.get("allOf", []):
        _walk(sub, value, at, problems)
    for combined in ("oneOf", "anyOf"):
        for sub in _branch(node, node[combined], value) if combined in node else []:
            _walk(sub, value, at, problems)
    field = at or "body"
    _other_enum(node, value, field, problems)
    if isinstance(value, str):
        if "maxLength" in node and len(value) > node["maxLength"]:
            problems.append({"field": field, "message": f"at most {node['maxLength']} characters"})
        if "minLength" in node and len(value) < node["minLength"]:
            problems.append({"field": field, "message": f"at least {node['minLength']} characters"})
        if node.get("pattern", ULID) != ULID and (rx := _regex(node["pattern"])) is not None and not rx.search(value):
            problems.append({"field": field, "message": f"must match the pattern {node['pattern']}"})
        enum = node.get("enum")
        if isinstance(enum, list) and enum and all(isinstance(e, str) for e in enum) and value not in enum:
            problems.append({"field": field, "message": f"must be one of {', '.join(enum)}"})
    elif isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        _number(node, value, field, problems)
        _multiple_of(node, value, field, problems)
    elif isinstance(value, list):
        if "maxItems" in node and len(value) > node["maxItems"]:
            problems.append({"field": field, "message": f"at most {node['maxItems']} items"})
        if "minItems" in node and len(value) < node["minItems"]:
            problems.append({"field": field, "message": f"at least {node['minItems']} items"})
        if isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                _walk(node["items"], item, f"{at}[{i}]", problems)
    elif isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                _walk(props[key], item, _name(at, key), problems)
            elif isinstance(extra, dict):
                _walk(extra, item, _name(at, key), problems)


def _multiple_of(node: dict[str, Any], value: int | Decimal, field: str, problems: list[dict[str, str]]) -> None:
    """multipleOf, exactly (0.3 is a multiple of 0.1, as a float remainder would not say). A value whose quotient has
    more than 120 digits (1e999999: no such number reaches a service) is not judged here."""
    step = node.get("multipleOf")
    if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
        return
    try:
        with decimal.localcontext(_QUOTIENT):
            rest = Decimal(value) % Decimal(str(step))
    except ArithmeticError:
        return
    if rest != 0:
        problems.append({"field": field, "message": f"must be a multiple of {Decimal(str(step))}"})


def _same(value: Any, option: Any) -> bool:
    """JSON equality: a boolean is never a number (True is not 1), numbers compare exactly (1 and 1.0 are equal)."""
    if isinstance(value, bool) or isinstance(option, bool):
        return isinstance(value, bool) and isinstance(option, bool) and value == option
    if isinstance(value, (int, Decimal)) and isinstance(option, (int, float)):
        return Decimal(value) == Decimal(str(option))
    return type(value) is type(option) and bool(value == option)


def _other_enum(node: dict[str, Any], value: Any, field: str, problems: list[dict[str, str]]) -> None:
    """An enum of numbers or booleans (a string enum is checked with the strings): a number or boolean outside it.
    Another JSON type is the service's to judge, as types are."""
    enum = node.get("enum")
    if not isinstance(enum, list) or not enum or all(isinstance(e, str) for e in enum):
        return
    if isinstance(value, (bool, int, Decimal)) and not any(_same(value, e) for e in enum):
        problems.append({"field": field, "message": "must be one of " + ", ".join(json.dumps(e) for e in enum)})


def check(method: str, path: str, body: Any) -> None:
    """Refuse (400 naming each field) a body outside its operation's bounds in the served document."""
    schema = body_schema(method, path)
    if schema is None:
        return
    problems: list[dict[str, str]] = []
    _walk(schema, body, "", problems)
    if problems:
        unique = list({(p["field"], p["message"]): p for p in problems}.values())
        raise ValidationFailed("; ".join(f"{p['field']}: {p['message']}" for p in unique), unique)
