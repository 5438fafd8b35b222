"""A local stand-in for the part of Stripe's API the Stripe app uses, for tests (no network, no account).

It speaks the real wire format: form-encoded bodies (`metadata[k]=v`, `period[start]=1`, `expand[0]=x`), Bearer
API keys, `Stripe-Version`, `Idempotency-Key` (the same key with the same parameters replays the first answer with
`Idempotent-Replayed: true`; with other parameters it is a 400 idempotency_error; a request that failed
validation is not remembered, as on Stripe), Stripe-shaped error bodies ({"error": {"type", "code", "message",
"param"}}). Every request is validated against the request shapes in stripe_request_shapes.json (see shapes.py:
derived from the stripe library's params, which are generated from Stripe's OpenAPI spec): an unknown parameter,
a wrong type or a missing required one is a 400, as Stripe answers it.

Endpoints: POST /v1/customers, GET /v1/customers/{id}, POST /v1/invoices, GET /v1/invoices/{id},
POST /v1/invoiceitems, POST /v1/invoices/{id}/finalize, POST /v1/invoices/{id}/void. A customer's `balance` is kept as
Stripe keeps it: a finalised invoice with a negative total credits it, and credit there lowers what the customer's next
finalised invoice asks (`amount_due`; its `total` stays).

Tests drive payment outcomes (`pay`, `fail_payment`, `mark_uncollectible`): each emits the Stripe event, signed
like Stripe signs webhooks (`Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<payload>")>`), and
POSTs it to `webhook_url` when one is set. `inject(...)` makes the next matching request fail: "timeout" does
the work and answers only after `delay` seconds (past the client's timeout), "drop" does the work and closes the
connection without an answer, "unavailable" answers 503 without doing anything.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.stripe_standin import shapes

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_INT_RE = re.compile(r"^-?\d+$")


class StripeHTTPError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": {"type": type_, "message": message}}
        if code:
            self.body["error"]["code"] = code
        if param:
            self.body["error"]["param"] = param


# -- wire format ------------------------------------------------------------------------------------------------
def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding to nested values: a[b][c]=v -> {"a": {"b": {"c": "v"}}}; indexed keys become lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        m = _KEY_RE.match(key)
        if not m:
            raise StripeHTTPError(400, f"Invalid parameter name: {key}", code="parameter_unknown", param=key)
        parts = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # a[]=x: append
                part = str(sum(1 for k in node if k.isdigit()))
            if last:
                node[part] = value
            else:
                nxt = node.setdefault(part, {})
                if not isinstance(nxt, dict):
                    raise StripeHTTPError(400, f"Invalid hash: {key}", param=key)
                node = nxt
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _lists(v) for k, v in node.items()}
    if out and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


def _name(path: str, key: str | int) -> str:
    return str(key) if not path else f"{path}[{key}]"


def validate(value: Any, schema: dict[str, Any], path: str = "") -> Any:
    """Check a decoded parameter against its shape and convert it (integers, booleans); raise StripeHTTPError."""
    if schema.get("emptyable") and value == "":
        return ""
    if "anyOf" in schema:
        last: StripeHTTPError | None = None
        for option in schema["anyOf"]:
            try:
                return validate(value, option, path)
            except StripeHTTPError as exc:
                last = exc
        assert last is not None
        raise last
    if "enum" in schema:
        if value not in schema["enum"]:
            raise StripeHTTPError(400, f"Invalid {path}: must be one of {', '.join(map(str, schema['enum']))}",
                                  code="parameter_invalid_string" if value == "" else None, param=path)
        return value
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise StripeHTTPError(400, f"Invalid object: {path} must be a hash", code="parameter_invalid_object",
                                  param=path)
        props = schema.get("properties")
        out: dict[str, Any] = {}
        if props is None:
            for k, v in value.items():
                out[k] = validate(v, schema.get("additionalProperties", {"type": "string"}), _name(path, k))
            return out
        for k, v in value.items():
            if k not in props:
                raise StripeHTTPError(400, f"Received unknown parameter: {_name(path, k)}", code="parameter_unknown",
                                      param=_name(path, k))
            out[k] = validate(v, props[k], _name(path, k))
        for k in schema.get("required", []):
            if k not in value:
                raise StripeHTTPError(400, f"Missing required param: {_name(path, k)}.", code="parameter_missing",
                                      param=_name(path, k))
        return out
    if kind == "array":
        if not isinstance(value, list):
            raise StripeHTTPError(400, f"Invalid array: {path}", code="parameter_invalid_array", param=path)
        return [validate(v, schema["items"], _name(path, i)) for i, v in enumerate(value)]
    if not isinstance(value, str):
        raise StripeHTTPError(400, f"Invalid {kind}: {path} must be a single value", param=path)
    if kind == "integer":
        if not _INT_RE.match(value):
            raise StripeHTTPError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=path)
        return int(value)
    if kind == "boolean":
        if value not in ("true", "false"):
            raise StripeHTTPError(400, f"Invalid boolean: {value}", param=path)
        return value == "true"
    if kind == "decimal":
        try:
            Decimal(value)
        except InvalidOperation:
            raise StripeHTTPError(400, f"Invalid decimal: {value}", param=path) from None
        return value
    if value == "":
        raise StripeHTTPError(400, f"You passed an empty string for '{path}'. We assume empty values are an attempt "
                                   "to unset a parameter; however '{path}' cannot be unset.",
                              code="parameter_invalid_empty", param=path)
    return value


def sign(payload: str, secret: str, timestamp: int) -> str:
    """Stripe's webhook signature header for `payload`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


# -- the stand-in -------------------------------------------------------------------------------------------------
@dataclass
class Delivery:
    type: str
    payload: str
    signature: str
    status: int | None = None


@dataclass
class StandIn:
    api_key: str = "sk_test_standin"
    webhook_secret: str = "whsec_standin"
    webhook_url: str | None = None
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    webhook_endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # billing portal and checkout sessions
    account_id: str = "acct_standin"
    requests: list[dict[str, Any]] = field(default_factory=list)
    events: list[Delivery] = field(default_factory=list)

    def __post_init__(self) -> None:
        loaded = shapes.load()
        self.api_version: str = loaded["_source"]["apiVersion"]
        self._ops: dict[str, dict[str, Any]] = loaded["operations"]
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._idem: dict[str, tuple[str, str, int, str]] = {}
        self._in_flight: set[str] = set()
        self._faults: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None

    # -- life cycle
    def start(self) -> StandIn:
        standin = self

        class Handler(_Handler):
            owner = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- test controls
    def inject(self, fault: str, *, method: str = "POST", path: str = "", times: int = 1, delay: float = 1.0) -> None:
        """Make the next `times` requests whose path contains `path` fail: "timeout" (done, answered after
        `delay` s), "drop" (done, answer lost) or "unavailable" (503, not done)."""
        assert fault in ("timeout", "drop", "unavailable")
        with self._lock:
            self._faults.append({"fault": fault, "method": method, "path": path, "times": times, "delay": delay})

    def pay(self, invoice_id: str) -> Delivery:
        with self._lock:
            inv = self._invoice(invoice_id)
            if inv["status"] != "open":
                raise ValueError(f"invoice {invoice_id} is {inv['status']}, not open")
            inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0)
            inv["status_transitions"]["paid_at"] = int(time.time())
        return self.emit("invoice.paid", inv)

    def fail_payment(self, invoice_id: str) -> Delivery:
        with self._lock:
            inv = self._invoice(invoice_id)
            inv["attempt_count"] += 1
        return self.emit("invoice.payment_failed", inv)

    def mark_uncollectible(self, invoice_id: str) -> Delivery:
        with self._lock:
            inv = self._invoice(invoice_id)
            inv["status"] = "uncollectible"
            inv["status_transitions"]["marked_uncollectible_at"] = int(time.time())
        return self.emit("invoice.marked_uncollectible", inv)

    def emit(self, type_: str, obj: dict[str, Any], *, timestamp: int | None = None,
             secret: str | None = None) -> Delivery:
        """Build, sign and (with webhook_url) deliver an event about `obj`."""
        now = int(time.time())
        event = {"id": f"evt_{next(self._ids):06d}", "object": "event", "api_version": self.api_version,
                 "created": now, "data": {"object": copy.deepcopy(obj)}, "livemode": False, "pending_webhooks": 1,
                 "request": {"id": None, "idempotency_key": None}, "type": type_}
        payload = json.dumps(event)
        d = Delivery(type_, payload, sign(payload, secret or self.webhook_secret, timestamp or now))
        self.events.append(d)
        if self.webhook_url:
            req = urllib.request.Request(self.webhook_url, data=payload.encode(), method="POST",
                                         headers={"Content-Type": "application/json; charset=utf-8",
                                                  "Stripe-Signature": d.signature})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - a local test URL
                    d.status = resp.status
            except urllib.error.HTTPError as exc:
                d.status = exc.code
        return d

    def posts(self, path_prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"].startswith(path_prefix)]

    # -- request handling
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """One request; None means "drop the connection without an answer"."""
        split = urlsplit(raw_path)
        path = split.path
        record: dict[str, Any] = {"method": method, "path": path, "idempotencyKey": headers.get("idempotency-key")}
        self.requests.append(record)
        try:
            if headers.get("authorization") != f"Bearer {self.api_key}":
                raise StripeHTTPError(401, "Invalid API Key provided: " + (headers.get("authorization") or "")[7:15]
                                      + "****")
            if headers.get("stripe-version") != self.api_version:
                raise StripeHTTPError(400, f"this stand-in serves API version {self.api_version}, not "
                                           f"{headers.get('stripe-version')!r}")
            op, args = self._route(method, path)
            pairs = parse_qsl(body if method == "POST" else split.query, keep_blank_values=True)
            params = validate(decode_form(pairs), self._ops[op])
            record["params"] = params
            fault, delay = self._take_fault(method, path)
            if fault == "unavailable":
                raise StripeHTTPError(503, "The stand-in is unavailable (injected)", type_="api_error")
            key = headers.get("idempotency-key") if method == "POST" else None
            if key:
                status, out, replayed = self._idempotent(key, method, path, params, lambda: self._run(op, args, params))
            else:
                status, out, replayed = *self._run(op, args, params), False
            record["status"] = status
            if fault == "drop":
                return None
            if fault == "timeout":
                time.sleep(delay)
            return status, out, {"Idempotent-Replayed": "true"} if replayed else {}
        except StripeHTTPError as exc:
            record["status"] = exc.status
            return exc.status, exc.body, {}

    def _take_fault(self, method: str, path: str) -> tuple[str | None, float]:
        with self._lock:
            for f in self._faults:
                if f["method"] == method and f["path"] in path and f["times"] > 0:
                    f["times"] -= 1
                    return str(f["fault"]), float(f["delay"])
        return None, 0.0

    def _idempotent(self, key: str, method: str, path: str, params: dict[str, Any],
                    run: Any) -> tuple[int, dict[str, Any], bool]:
        fingerprint = json.dumps(params, sort_keys=True)
        with self._lock:
            seen = self._idem.get(key)
            if seen is not None:
                if (seen[0], seen[1]) != (f"{method} {path}", fingerprint):
                    raise StripeHTTPError(
                        400, "Keys for idempotent requests can only be used with the same parameters they were first "
                             f"used with. Try using a key other than '{key}' if you meant to execute a different "
                             "request.", type_="idempotency_error")
                return seen[2], json.loads(seen[3]), True
            if key in self._in_flight:
                raise StripeHTTPError(409, "There is currently another in-progress request using this Idempotent Key "
                                           "(that probably means you submitted twice, and the other request is still "
                                           "going through).", type_="idempotency_error")
            self._in_flight.add(key)
        try:
            try:
                status, out = run()
            except StripeHTTPError as exc:  # executed and refused: remembered like a success
                status, out = exc.status, exc.body
            with self._lock:
                self._idem[key] = (f"{method} {path}", fingerprint, status, json.dumps(out))
            return status, out, False
        finally:
            with self._lock:
                self._in_flight.discard(key)

    def _route(self, method: str, path: str) -> tuple[str, list[str]]:
        parts = path.strip("/").split("/")
        candidates = {
            ("POST", 2, "customers"): "POST /v1/customers",
            ("GET", 3, "customers"): "GET /v1/customers/{customer}",
            ("POST", 2, "invoices"): "POST /v1/invoices",
            ("GET", 3, "invoices"): "GET /v1/invoices/{invoice}",
            ("POST", 2, "invoiceitems"): "POST /v1/invoiceitems",
            ("GET", 2, "account"): "GET /v1/account",
            ("POST", 2, "webhook_endpoints"): "POST /v1/webhook_endpoints",
            ("DELETE", 3, "webhook_endpoints"): "DELETE /v1/webhook_endpoints/{webhook_endpoint}",
        }
        if len(parts) >= 2 and parts[0] == "v1":
            op = candidates.get((method, len(parts), parts[1]))
            if op is None and method == "POST" and len(parts) == 4 and parts[1] == "invoices" \
                    and parts[3] in ("finalize", "void"):
                op = f"POST /v1/invoices/{{invoice}}/{parts[3]}"
            if op is None and len(parts) == 3 and parts[1:] in (["billing_portal", "sessions"], ["checkout", "sessions"]) \
                    and method == "POST":
                op = f"POST /v1/{parts[1]}/sessions"
            if op is not None:
                return op, parts[2:3]
        raise StripeHTTPError(404, f"Unrecognized request URL ({method}: {path}).")

    # -- the resources
    def _run(self, op: str, args: list[str], params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if op == "POST /v1/customers":
                return 200, self._create_customer(params)
            if op == "GET /v1/customers/{customer}":
                return 200, copy.deepcopy(self._customer(args[0], "id"))
            if op == "POST /v1/invoices":
                return 200, self._create_invoice(params)
            if op == "GET /v1/invoices/{invoice}":
                return 200, copy.deepcopy(self._invoice(args[0]))
            if op == "POST /v1/invoiceitems":
                return 200, self._create_item(params)
            if op == "POST /v1/invoices/{invoice}/finalize":
                return 200, self._finalize(args[0], params)
            if op == "GET /v1/account":
                return 200, {"id": self.account_id, "object": "account", "livemode": False, "country": "US",
                             "default_currency": "usd", "business_profile": {"name": "Stand-in"}}
            if op == "POST /v1/webhook_endpoints":
                return 200, self._create_webhook_endpoint(params)
            if op == "DELETE /v1/webhook_endpoints/{webhook_endpoint}":
                if self.webhook_endpoints.pop(args[0], None) is None:
                    raise StripeHTTPError(404, f"No such webhook endpoint: '{args[0]}'", code="resource_missing",
                                          param="id")
                return 200, {"id": args[0], "object": "webhook_endpoint", "deleted": True}
            if op == "POST /v1/billing_portal/sessions":
                return 200, self._create_portal_session(params)
            if op == "POST /v1/checkout/sessions":
                return 200, self._create_checkout_session(params)
            return 200, self._void(args[0])

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_standin{next(self._ids):06d}"

    def _customer(self, cid: str, param: str) -> dict[str, Any]:
        found = self.customers.get(cid)
        if found is None:
            raise StripeHTTPError(404 if param == "id" else 400, f"No such customer: '{cid}'", code="resource_missing",
                                  param=param)
        return found

    def _invoice(self, iid: str, param: str = "id") -> dict[str, Any]:
        found = self.invoices.get(iid)
        if found is None:
            raise StripeHTTPError(404 if param == "id" else 400, f"No such invoice: '{iid}'", code="resource_missing",
                                  param=param)
        return found

    def _create_customer(self, p: dict[str, Any]) -> dict[str, Any]:
        c = {"id": self._new_id("cus"), "object": "customer", "created": int(time.time()), "livemode": False,
             "email": p.get("email"), "name": p.get("name"), "description": p.get("description"),
             "metadata": p.get("metadata") or {}, "currency": None, "balance": 0}
        self.customers[c["id"]] = c
        return copy.deepcopy(c)

    def _create_invoice(self, p: dict[str, Any]) -> dict[str, Any]:
        if "customer" not in p:
            raise StripeHTTPError(400, "Missing required param: customer.", code="parameter_missing", param="customer")
        cust = self._customer(p["customer"], "customer")
        method = p.get("collection_method", "charge_automatically")
        if method == "send_invoice" and "days_until_due" not in p and "due_date" not in p:
            raise StripeHTTPError(400, "Missing required param: days_until_due or due_date (collection_method is "
                                       "send_invoice).", code="parameter_missing", param="days_until_due")
        if method == "charge_automatically" and ("days_until_due" in p or "due_date" in p):
            raise StripeHTTPError(400, "You cannot set days_until_due or due_date when collection_method is "
                                       "charge_automatically.", code="parameter_invalid", param="days_until_due")
        iid = self._new_id("in")
        inv: dict[str, Any] = {
            "id": iid, "object": "invoice", "customer": cust["id"], "currency": p.get("currency", "usd"),
            "status": "draft", "collection_method": method, "auto_advance": p.get("auto_advance", True),
            "days_until_due": p.get("days_until_due"), "due_date": p.get("due_date"),
            "metadata": p.get("metadata") or {}, "description": p.get("description"), "number": None,
            "hosted_invoice_url": None, "invoice_pdf": None, "created": int(time.time()), "livemode": False,
            "subtotal": 0, "total": 0, "amount_due": 0, "amount_paid": 0, "amount_remaining": 0, "attempt_count": 0,
            "lines": {"object": "list", "data": [], "has_more": False, "url": f"/v1/invoices/{iid}/lines"},
            "status_transitions": {"finalized_at": None, "paid_at": None, "voided_at": None,
                                   "marked_uncollectible_at": None},
        }
        self.invoices[iid] = inv
        if p.get("pending_invoice_items_behavior") == "include":
            for item in self.items.values():
                if item["customer"] == cust["id"] and item["invoice"] is None and item["currency"] == inv["currency"]:
                    self._attach(inv, item)
        return copy.deepcopy(inv)

    def _create_item(self, p: dict[str, Any]) -> dict[str, Any]:
        for required in ("customer", "amount", "currency"):  # the stand-in prices items by amount only
            if required not in p:
                raise StripeHTTPError(400, f"Missing required param: {required}.", code="parameter_missing",
                                      param=required)
        cust = self._customer(p["customer"], "customer")
        inv = self._invoice(p["invoice"], "invoice") if "invoice" in p else None
        if inv is not None:
            if inv["status"] != "draft":
                raise StripeHTTPError(400, f"Invoice {inv['id']} is not a draft; invoice items can only be added to "
                                           "draft invoices.", param="invoice")
            if inv["customer"] != cust["id"]:
                raise StripeHTTPError(400, "The invoice belongs to another customer.", param="invoice")
            if inv["currency"] != p["currency"]:
                raise StripeHTTPError(400, f"Currency {p['currency']} does not match the invoice's "
                                           f"{inv['currency']}.", param="currency")
            if len(inv["lines"]["data"]) >= 250:
                raise StripeHTTPError(400, "An invoice can have at most 250 invoice items.", param="invoice")
        now = int(time.time())
        item = {"id": self._new_id("ii"), "object": "invoiceitem", "amount": p["amount"], "currency": p["currency"],
                "customer": cust["id"], "description": p.get("description"), "metadata": p.get("metadata") or {},
                "period": p.get("period") or {"start": now, "end": now}, "invoice": None, "date": now,
                "livemode": False}
        self.items[item["id"]] = item
        if inv is not None:
            self._attach(inv, item)
        return copy.deepcopy(item)

    def _attach(self, inv: dict[str, Any], item: dict[str, Any]) -> None:
        item["invoice"] = inv["id"]
        inv["lines"]["data"].append({
            "id": self._new_id("il"), "object": "line_item", "amount": item["amount"], "currency": item["currency"],
            "description": item["description"], "metadata": item["metadata"], "period": item["period"],
            "invoice": inv["id"], "parent": {"type": "invoice_item_details",
                                             "invoice_item_details": {"invoice_item": item["id"]}}})
        total = sum(line["amount"] for line in inv["lines"]["data"])
        inv.update(subtotal=total, total=total, amount_due=max(total, 0), amount_remaining=max(total, 0))

    def _finalize(self, iid: str, p: dict[str, Any]) -> dict[str, Any]:
        inv = self._invoice(iid)
        if inv["status"] != "draft":
            raise StripeHTTPError(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                                  code="invoice_not_editable")
        seq = sum(1 for i in self.invoices.values() if i["number"]) + 1
        inv.update(status="open", number=f"STANDIN-{seq:04d}", hosted_invoice_url=f"{self.url}/hosted/{iid}",
                   invoice_pdf=f"{self.url}/hosted/{iid}/pdf")
        if "auto_advance" in p:
            inv["auto_advance"] = p["auto_advance"]
        inv["status_transitions"]["finalized_at"] = int(time.time())
        # The customer's balance (negative: credit the customer has), as Stripe keeps it: a negative total is
        # credited to it, and credit there is applied to what a later invoice asks (its total stays as it is).
        # https://docs.stripe.com/invoicing/customer/balance
        cust = self.customers[inv["customer"]]
        inv["starting_balance"] = cust["balance"]
        if inv["total"] < 0:
            cust["balance"] += inv["total"]
        elif cust["balance"] < 0:
            applied = min(inv["total"], -cust["balance"])
            cust["balance"] += applied
            inv.update(amount_due=inv["amount_due"] - applied, amount_remaining=inv["amount_remaining"] - applied)
        inv["ending_balance"] = cust["balance"]
        if inv["amount_due"] == 0:  # nothing to collect: Stripe marks it paid at once
            inv["status"] = "paid"
            inv["status_transitions"]["paid_at"] = int(time.time())
        return copy.deepcopy(inv)

    def _create_webhook_endpoint(self, p: dict[str, Any]) -> dict[str, Any]:
        """Its signing secret is the stand-in's webhook_secret, so `emit` signs what this endpoint would get."""
        we = {"id": self._new_id("we"), "object": "webhook_endpoint", "url": p["url"], "status": "enabled",
              "enabled_events": p["enabled_events"], "api_version": p.get("api_version"), "livemode": False,
              "metadata": p.get("metadata") or {}, "description": p.get("description"), "created": int(time.time()),
              "secret": self.webhook_secret}
        self.webhook_endpoints[we["id"]] = we
        return copy.deepcopy(we)

    def _create_portal_session(self, p: dict[str, Any]) -> dict[str, Any]:
        if "customer" not in p:
            raise StripeHTTPError(400, "Missing required param: customer.", code="parameter_missing", param="customer")
        cust = self._customer(p["customer"], "customer")
        sid = self._new_id("bps")
        session = {"id": sid, "object": "billing_portal.session", "customer": cust["id"],
                   "configuration": p.get("configuration", "bpc_standin_default"), "created": int(time.time()),
                   "livemode": False, "locale": p.get("locale"), "return_url": p.get("return_url"),
                   "url": f"{self.url}/portal/{sid}"}
        self.sessions[sid] = session
        return copy.deepcopy(session)

    def _create_checkout_session(self, p: dict[str, Any]) -> dict[str, Any]:
        mode = p.get("mode")
        if mode is None:
            raise StripeHTTPError(400, "Missing required param: mode.", code="parameter_missing", param="mode")
        if mode == "setup" and "currency" not in p and "allowed_payment_method_types" not in p:
            raise StripeHTTPError(400, "currency or allowed_payment_method_types is required in setup mode.",
                                  code="parameter_missing", param="currency")
        cust = self._customer(p["customer"], "customer") if "customer" in p else None
        ui = {"hosted": "hosted_page", "embedded": "embedded_page"}.get(p.get("ui_mode", ""), p.get("ui_mode", "hosted_page"))
        now = int(time.time())
        sid = self._new_id("cs_test")
        session = {"id": sid, "object": "checkout.session", "mode": mode, "status": "open", "ui_mode": ui,
                   "customer": cust["id"] if cust else None, "customer_email": cust.get("email") if cust else None,
                   "setup_intent": self._new_id("seti") if mode == "setup" else None, "currency": p.get("currency"),
                   "client_reference_id": p.get("client_reference_id"), "metadata": p.get("metadata") or {},
                   "created": now, "expires_at": p.get("expires_at", now + 86400), "livemode": False,
                   "success_url": p.get("success_url"), "cancel_url": p.get("cancel_url"),
                   "return_url": p.get("return_url"),
                   "client_secret": f"{sid}_secret" if ui != "hosted_page" else None,
                   "url": f"{self.url}/checkout/{sid}" if ui == "hosted_page" else None}
        self.sessions[sid] = session
        return copy.deepcopy(session)

    def _void(self, iid: str) -> dict[str, Any]:
        inv = self._invoice(iid)
        if inv["status"] not in ("open", "uncollectible"):
            raise StripeHTTPError(400, f"You can only void open or uncollectible invoices; this one is {inv['status']}.",
                                  code="invoice_not_editable")
        inv["status"] = "void"
        inv["status_transitions"]["voided_at"] = int(time.time())
        return copy.deepcopy(inv)


class _Handler(BaseHTTPRequestHandler):
    owner: StandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet in tests
        return

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        headers = {k.lower(): v for k, v in self.headers.items()}
        result = self.owner.handle(method, self.path, headers, body)
        if result is None:  # the work is done, the answer is lost
            self.close_connection = True
            self.connection.shutdown(2)
            return
        status, out, extra = result
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_standin{len(self.owner.requests):06d}")
        self.send_header("Stripe-Version", self.owner.api_version)
        for k, v in extra.items():
            self.send_header(k, v)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (an injected timeout)
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")
