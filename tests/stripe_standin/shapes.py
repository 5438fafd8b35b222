"""Request shapes of the Stripe operations the stand-in serves, as a JSON-Schema subset.

Source: the typed request parameters of the `stripe` Python library installed here (`stripe/params/*.py`,
"File generated from our OpenAPI spec"), i.e. Stripe's published OpenAPI spec for the API version the library
pins. The spec itself (github.com/stripe/openapi, openapi/spec3.json) could not be fetched on this machine (no
network; the stored copy is a 2020 version of 3.3 MB), so the shapes are derived from the generated params.

`python -m tests.stripe_standin.shapes` rewrites stripe_request_shapes.json; a test checks that the committed
file still equals what the installed library gives, so an upgrade of `stripe` shows up as a diff.

Schema nodes: {"type": "string"|"integer"|"boolean"|"decimal"}, {"enum": [...]} (with "openEnum": true where
the SDK also accepts any string), {"type": "array", "items": ...}, {"type": "object", "properties": ...,
"required": [...]} or {"type": "object", "additionalProperties": {...}} (maps such as metadata),
{"anyOf": [...]}; {"emptyable": true} marks a parameter that accepts "" (Stripe's "unset").
"""

from __future__ import annotations

import json
import sys
import types
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import stripe
import typing_extensions

HERE = Path(__file__).resolve().parent
SHAPES_FILE = HERE / "stripe_request_shapes.json"

# (method, path template) -> name of the generated params class in stripe.params
OPERATIONS: dict[str, str] = {
    "POST /v1/customers": "CustomerCreateParams",
    "GET /v1/customers/{customer}": "CustomerRetrieveParams",
    "POST /v1/invoices": "InvoiceCreateParams",
    "GET /v1/invoices/{invoice}": "InvoiceRetrieveParams",
    "POST /v1/invoiceitems": "InvoiceItemCreateParams",
    "POST /v1/invoices/{invoice}/finalize": "InvoiceFinalizeInvoiceParams",
    "POST /v1/invoices/{invoice}/void": "InvoiceVoidInvoiceParams",
    "GET /v1/account": "AccountRetrieveCurrentParams",
    "POST /v1/webhook_endpoints": "WebhookEndpointCreateParams",
    "DELETE /v1/webhook_endpoints/{webhook_endpoint}": "WebhookEndpointDeleteParams",
    "POST /v1/billing_portal/sessions": "billing_portal.SessionCreateParams",
    "POST /v1/checkout/sessions": "checkout.SessionCreateParams",
}

_REQUEST_OPTIONS = set(stripe.RequestOptions.__annotations__)  # client-side options, not body parameters


def _resolve(ann: Any, module: types.ModuleType) -> Any:
    if isinstance(ann, str):
        return eval(ann, vars(module))  # noqa: S307 - the library's own generated annotations
    if isinstance(ann, typing.ForwardRef):
        return eval(ann.__forward_arg__, vars(module))  # noqa: S307
    return ann


def _schema(ann: Any, module: types.ModuleType, seen: tuple[str, ...]) -> dict[str, Any]:
    ann = _resolve(ann, module)
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin in (typing_extensions.NotRequired, typing_extensions.Required, typing.NotRequired, typing.Required):
        return _schema(args[0], module, seen)
    if origin in (typing.Union, types.UnionType):
        parts = [_resolve(a, module) for a in args]
        emptyable = any(typing.get_origin(p) in (typing.Literal, typing_extensions.Literal)
                        and typing.get_args(p) == ("",) for p in parts)
        rest = [p for p in parts if not (typing.get_origin(p) in (typing.Literal, typing_extensions.Literal)
                                         and typing.get_args(p) == ("",))]
        literals = [p for p in rest if typing.get_origin(p) in (typing.Literal, typing_extensions.Literal)]
        if literals and str in rest and len(rest) == 2:  # Literal[...] | str: an enum Stripe may extend
            out = {**_schema(literals[0], module, seen), "openEnum": True}
        elif len(rest) == 1:
            out = _schema(rest[0], module, seen)
        else:
            unique = {json.dumps(s, sort_keys=True): s for s in (_schema(p, module, seen) for p in rest)}
            out = next(iter(unique.values())) if len(unique) == 1 else {"anyOf": list(unique.values())}
        return {**out, "emptyable": True} if emptyable else out
    if origin in (typing.Literal, typing_extensions.Literal):
        return {"enum": list(args)}
    if origin in (list, typing.List):  # noqa: UP006
        return {"type": "array", "items": _schema(args[0], module, seen)}
    if origin in (dict, typing.Dict) or (isinstance(origin, type) and issubclass(origin, stripe.StripeObject)):  # noqa: UP006
        return {"type": "object", "additionalProperties": _schema(args[-1], module, seen)}
    if ann is str:
        return {"type": "string"}
    if ann is bool:
        return {"type": "boolean"}
    if ann is int:
        return {"type": "integer"}
    if ann is Decimal or ann is float:  # a number parameter: sent as decimal text
        return {"type": "decimal"}
    if typing_extensions.is_typeddict(ann):
        return _object(ann, seen)
    raise TypeError(f"unmapped annotation {ann!r}")


def _object(cls: Any, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if cls.__name__ in seen:
        raise TypeError(f"recursive params type {cls.__name__}")
    module = sys.modules[cls.__module__]
    props = {k: _schema(v, module, (*seen, cls.__name__)) for k, v in cls.__annotations__.items()
             if k not in _REQUEST_OPTIONS}
    required = sorted(k for k in cls.__required_keys__ if k in props)
    return {"type": "object", "properties": dict(sorted(props.items())), "required": required}


def _params(name: str) -> Any:
    """The params class `name` of stripe.params ("checkout.SessionCreateParams": of stripe.params.checkout)."""
    import importlib

    package, _, cls = name.rpartition(".")
    return getattr(importlib.import_module("stripe.params" + (f".{package}" if package else "")), cls)


def build() -> dict[str, Any]:
    return {
        "_source": {
            "derivedFrom": f"stripe-python {stripe.VERSION} stripe/params/*.py (generated from Stripe's OpenAPI spec)",
            "apiVersion": stripe.api_version,
            "generator": "tests/stripe_standin/shapes.py",
            "note": "Stripe's OpenAPI spec (github.com/stripe/openapi, openapi/spec3.json) was out of reach here; "
                    "these are the request shapes of the SDK generated from it for the same API version",
        },
        "operations": {op: _object(_params(name)) for op, name in OPERATIONS.items()},
    }


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SHAPES_FILE.read_text(encoding="utf-8"))
    return data


if __name__ == "__main__":
    SHAPES_FILE.write_text(json.dumps(build(), indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {SHAPES_FILE}")
