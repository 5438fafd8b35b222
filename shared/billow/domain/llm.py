"""LLM cost tracking: the `llm` event convention, its ready-made token meters, per-million-token prices (a
user's overrides with a history by date) and the exact cost of token counts. Pure: no I/O, no clock.

An `llm` CloudEvent (type "llm") carries in `data`:

    provider, model                 e.g. "openai", "gpt-4o" (genai-prices' provider ids and model names)
    input_tokens                    ALL input tokens of the request, cached reads and cache writes included
                                    (OpenAI's prompt_tokens; for Anthropic send input + cache_read + cache_creation)
    output_tokens                   output tokens (reasoning included)
    cached_input_tokens             input tokens read from the provider's prompt cache (part of input_tokens)
    cache_write_tokens              input tokens written to the prompt cache (part of input_tokens)
    customer, team, feature         free-form dimensions (strings), optional

The token meters are SUM meters on eventType "llm", grouped by provider, model and the three dimensions.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from billow.domain import fields
from billow.domain.money import Currency
from billow.errors import ValidationFailed
from billow.exact import EXACT
from billow.timeutil import format_rfc3339, parse_rfc3339

LLM_EVENT_TYPE: Final = "llm"
PRICE_CURRENCY: Final = "USD"  # genai-prices publishes USD; a cost report adds amounts across models
DIMENSIONS: Final = ("provider", "model", "customer", "team", "feature")
PRICE_KEYS: Final = ("provider", "model")  # what a price is looked up by

# token type (JSON name) -> (meter slug, field of the event's data)
TOKEN_TYPES: Final = ("input", "cachedInput", "cacheWrite", "output")
TOKEN_METERS: Final[dict[str, tuple[str, str]]] = {
    "input": ("llm_input_tokens", "input_tokens"),
    "cachedInput": ("llm_cached_input_tokens", "cached_input_tokens"),
    "cacheWrite": ("llm_cache_write_tokens", "cache_write_tokens"),
    "output": ("llm_output_tokens", "output_tokens"),
}
# A SUM meter refuses an event without its valueProperty (OpenMeter semantics), so these two meters are
# installed on request only: without them, every event may leave the fields out and all input is uncached.
CACHE_TOKEN_TYPES: Final = ("cachedInput", "cacheWrite")

_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)
_ADD = EXACT.add
_NUMERIC_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_BEGINNING = datetime.min.replace(tzinfo=UTC)
MAX_PRICE = Decimal(1_000_000)  # USD per million tokens; anything above is a typo


def meter_definitions(cache_tokens: bool) -> list[dict[str, Any]]:
    """MeterCreate bodies of the token meters (the cache meters only with `cache_tokens`)."""
    out = []
    for token_type in TOKEN_TYPES:
        if token_type in CACHE_TOKEN_TYPES and not cache_tokens:
            continue
        slug, field_name = TOKEN_METERS[token_type]
        out.append({"slug": slug, "name": f"LLM {field_name.replace('_', ' ')}", "eventType": LLM_EVENT_TYPE,
                    "aggregation": "SUM", "valueProperty": f"$.{field_name}",
                    "groupBy": {d: f"$.{d}" for d in DIMENSIONS},
                    "description": f"Sum of data.{field_name} of `llm` events (Billow's LLM cost tracking)"})
    return out


# ---------------------------------------------------------------------------------------------------------
# Prices and costs


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """USD per million tokens. A missing cached-input or cache-write price means those tokens cost the input
    price (as genai-prices computes it); a missing input or output price cannot price those tokens."""

    input: Decimal | None
    output: Decimal | None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None


@dataclass(frozen=True, slots=True)
class TokenCounts:
    input: Decimal = _ZERO  # all input tokens, cached reads and cache writes included
    cached_input: Decimal = _ZERO
    cache_write: Decimal = _ZERO
    output: Decimal = _ZERO

    def __add__(self, other: TokenCounts) -> TokenCounts:
        with decimal.localcontext(EXACT):
            return TokenCounts(self.input + other.input, self.cached_input + other.cached_input,
                               self.cache_write + other.cache_write, self.output + other.output)

    def by_type(self) -> dict[str, Decimal]:
        return {"input": self.input, "cachedInput": self.cached_input, "cacheWrite": self.cache_write,
                "output": self.output}

    @classmethod
    def of(cls, values: dict[str, Decimal]) -> TokenCounts:
        return cls(values.get("input", _ZERO), values.get("cachedInput", _ZERO), values.get("cacheWrite", _ZERO),
                   values.get("output", _ZERO))


@dataclass(frozen=True, slots=True)
class Cost:
    """USD, exact. `input` prices the input tokens that are neither cached reads nor cache writes."""

    input: Decimal = _ZERO
    cached_input: Decimal = _ZERO
    cache_write: Decimal = _ZERO
    output: Decimal = _ZERO

    @property
    def total(self) -> Decimal:
        add = _ADD  # EXACT.add: the exact context's addition without entering it (a report adds up many lines)
        return add(add(add(self.input, self.cached_input), self.cache_write), self.output)

    def __add__(self, other: Cost) -> Cost:
        add = _ADD
        return Cost(add(self.input, other.input), add(self.cached_input, other.cached_input),
                    add(self.cache_write, other.cache_write), add(self.output, other.output))

    @staticmethod
    def add_up(costs: Iterable[Cost]) -> Cost:
        """The exact sum of many costs, part by part."""
        parts = [_ZERO, _ZERO, _ZERO, _ZERO]
        with decimal.localcontext(EXACT):
            for c in costs:
                parts[0] += c.input
                parts[1] += c.cached_input
                parts[2] += c.cache_write
                parts[3] += c.output
        return Cost(*parts)

    def to_json(self) -> dict[str, str]:
        return {"input": plain(self.input), "cachedInput": plain(self.cached_input),
                "cacheWrite": plain(self.cache_write), "output": plain(self.output), "total": plain(self.total)}


class Unpriceable(ValueError):
    """These token counts cannot be priced with these prices (the reason is the message)."""


def token_cost(tokens: TokenCounts, prices: TokenPrices) -> Cost:
    """Exact USD cost: tokens × price / 1,000,000 per token type (no rounding anywhere)."""
    with decimal.localcontext(EXACT):
        uncached = tokens.input - tokens.cached_input - tokens.cache_write
        if uncached < 0:
            raise Unpriceable("cached_input_tokens + cache_write_tokens exceed input_tokens: input_tokens must "
                              "count every input token, cached reads and cache writes included")

        def part(count: Decimal, price: Decimal | None, what: str) -> Decimal:
            if count == 0:
                return _ZERO
            if price is None:
                raise Unpriceable(f"no per-token {what} price for this model")
            return count * price / _MILLION

        cached_price = prices.cached_input if prices.cached_input is not None else prices.input
        write_price = prices.cache_write if prices.cache_write is not None else prices.input
        return Cost(input=part(uncached, prices.input, "input"),
                    cached_input=part(tokens.cached_input, cached_price, "input (cached read)"),
                    cache_write=part(tokens.cache_write, write_price, "input (cache write)"),
                    output=part(tokens.output, prices.output, "output"))


# OpenMeter's token types (a feature's `unitCost` of type llm: `tokenType`, or the values of its `tokenTypeProperty`)
# -> the price of Billow's that prices them. `request` and `response` are OpenMeter's aliases of input and output.
# Each is priced per token as it is counted, nothing subtracted: OpenMeter's `input` is the tokens billed at the input
# price (Billow's own `input` meter counts every input token, cached reads and cache writes included). Reasoning tokens
# are billed as output tokens by the providers (genai-prices has no reasoning price): the output price.
OPENMETER_TOKEN_TYPES: Final = {"input": "input", "output": "output", "cache_read": "cached_input",
                                "reasoning": "output", "cache_write": "cache_write", "request": "input",
                                "response": "output"}


def per_token_price(prices: TokenPrices, token_type: str) -> Decimal:
    """USD per token of OpenMeter's `token_type` at these (per million) prices, exact; a cache read or write without
    its own price is the input price, as token_cost prices it. Unpriceable for another token type or a missing price."""
    part = OPENMETER_TOKEN_TYPES.get(token_type)
    if part is None:
        raise Unpriceable(f"{token_type!r} is not a token type ({', '.join(OPENMETER_TOKEN_TYPES)})")
    price = getattr(prices, part)
    if price is None and part in ("cached_input", "cache_write"):
        price = prices.input
    if price is None:
        raise Unpriceable(f"no per-token {part.replace('_', ' ')} price for this model")
    with decimal.localcontext(EXACT):
        return price / _MILLION


def plain(value: Decimal) -> str:
    """A Decimal as a plain string without exponent or trailing zeros (0.000025, 12, 3.5, never -0)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


# ---------------------------------------------------------------------------------------------------------
# Price overrides (the user's own prices, with a history by date)

_OVERRIDE_PRICES: Final = {
    "inputPerMillionTokens": ("input", True),
    "outputPerMillionTokens": ("output", True),
    "cachedInputPerMillionTokens": ("cached_input", False),
    "cacheWritePerMillionTokens": ("cache_write", False),
}
_OVERRIDE_FIELDS: Final = frozenset({"provider", "model", "currency", "effectiveFrom", *_OVERRIDE_PRICES})


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """The price of one provider's model from `effective_from` (None: for all usage) until the next override
    of the same model. Provider and model are matched case-insensitively (stored lower-case)."""

    id: str
    provider: str
    model: str
    prices: TokenPrices
    effective_from: datetime | None
    created_at: datetime
    currency: str = PRICE_CURRENCY

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "provider": self.provider, "model": self.model,
                               "currency": self.currency,
                               "effectiveFrom": format_rfc3339(self.effective_from) if self.effective_from else None}
        for name, (attr, _) in _OVERRIDE_PRICES.items():
            value = getattr(self.prices, attr)
            if value is not None:
                out[name] = plain(value)
        out["createdAt"] = format_rfc3339(self.created_at)
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PriceOverride:
        prices = TokenPrices(**{attr: Decimal(doc[name]) if doc.get(name) is not None else None
                                for name, (attr, _) in _OVERRIDE_PRICES.items()})
        eff = doc.get("effectiveFrom")
        return cls(id=doc["id"], provider=doc["provider"], model=doc["model"], prices=prices,
                   effective_from=parse_rfc3339(eff, "effectiveFrom") if eff else None,
                   created_at=parse_rfc3339(doc["createdAt"], "createdAt"), currency=doc.get("currency", PRICE_CURRENCY))


def _price_value(raw: Any, name: str, problems: list[dict[str, str]]) -> Decimal | None:
    if isinstance(raw, bool) or not isinstance(raw, str | int | Decimal):
        problems.append({"field": name, "message": "must be a decimal number or numeric string (USD per million tokens)"})
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("-"):
            problems.append({"field": name, "message": "must not be negative"})
            return None
        if not _NUMERIC_RE.match(text):
            problems.append({"field": name, "message": "must be a decimal number such as \"2.5\""})
            return None
        value = Decimal(text)
    else:
        value = Decimal(raw)
    if not value.is_finite():
        problems.append({"field": name, "message": "must be finite"})
    elif value < 0:
        problems.append({"field": name, "message": "must not be negative"})
    elif value > MAX_PRICE:
        problems.append({"field": name, "message": f"must be at most {MAX_PRICE} USD per million tokens"})
    else:
        return value
    return None


# The longest provider and model name a price override takes (a feature's LLM unit cost names no longer one).
PROVIDER_MAX = 128
MODEL_MAX = 256


def _name(raw: Any, name: str, limit: int, problems: list[dict[str, str]]) -> str:
    if not isinstance(raw, str) or not raw.strip():
        problems.append({"field": name, "message": "required: a non-empty string"})
        return ""
    if len(raw) > limit or "\x00" in raw:
        problems.append({"field": name, "message": f"must be at most {limit} characters, without NUL"})
        return ""
    return raw.strip().lower()


def parse_effective_from(raw: Any, name: str = "effectiveFrom") -> datetime:
    """An RFC 3339 date-time, or a calendar date YYYY-MM-DD meaning its midnight in UTC."""
    if isinstance(raw, str) and _DATE_RE.match(raw.strip()):
        try:
            return datetime.fromisoformat(raw.strip()).replace(tzinfo=UTC)
        except ValueError:
            raise ValidationFailed(f"{name}: not a valid date: {raw!r}", [{"field": name, "message": "not a valid date"}]) from None
    if not isinstance(raw, str):
        raise ValidationFailed(f"{name}: must be an RFC 3339 date-time or a YYYY-MM-DD date",
                               [{"field": name, "message": "must be an RFC 3339 date-time or a YYYY-MM-DD date"}])
    return parse_rfc3339(raw, name)


def parse_override(body: Any, *, id: str, now: datetime) -> PriceOverride:
    """A PriceOverride from its JSON body; ValidationFailed names every bad field."""
    if not isinstance(body, dict):
        raise ValidationFailed("body: must be a JSON object", [{"field": "body", "message": "must be a JSON object"}])
    problems: list[dict[str, str]] = [{"field": k, "message": "unknown field"} for k in sorted(body) if k not in _OVERRIDE_FIELDS]
    try:  # the optional fields' nulls (the required ones' are "required" below): Billow's schema makes none nullable
        fields.not_null(body, ("currency", "effectiveFrom", *(k for k, (_, required) in _OVERRIDE_PRICES.items()
                                                              if not required)))
    except ValidationFailed as exc:
        problems.extend(exc.errors)
    provider = _name(body.get("provider"), "provider", PROVIDER_MAX, problems)
    model = _name(body.get("model"), "model", MODEL_MAX, problems)
    currency = PRICE_CURRENCY if body.get("currency") is None else body["currency"]  # a null: named above
    try:
        code = Currency.of(currency).code
        if code != PRICE_CURRENCY:
            problems.append({"field": "currency", "message": f"only {PRICE_CURRENCY} is supported (genai-prices and "
                                                             "cost reports are in USD)"})
    except ValidationFailed as exc:
        problems.extend(exc.errors)
    values: dict[str, Decimal | None] = {}
    for name, (attr, required) in _OVERRIDE_PRICES.items():
        raw = body.get(name)
        if raw is None:
            if required:
                problems.append({"field": name, "message": "required (USD per million tokens)"})
            values[attr] = None
        else:
            values[attr] = _price_value(raw, name, problems)
    effective_from: datetime | None = None
    if body.get("effectiveFrom") is not None:
        try:
            effective_from = parse_effective_from(body["effectiveFrom"])
        except ValidationFailed as exc:
            problems.extend(exc.errors)
    if problems:
        raise ValidationFailed("invalid LLM price: " + "; ".join(f"{p['field']}: {p['message']}" for p in problems),
                               problems)
    return PriceOverride(id=id, provider=provider, model=model, prices=TokenPrices(**values),
                         effective_from=effective_from, created_at=now)


def override_in_effect(overrides: Iterable[PriceOverride], at: datetime) -> PriceOverride | None:
    """The override that prices usage at `at`: the latest one whose effectiveFrom is not after `at`."""
    candidates = [o for o in overrides if o.effective_from is None or o.effective_from <= at]
    return max(candidates, key=lambda o: o.effective_from or _BEGINNING, default=None)


def by_model(overrides: Sequence[PriceOverride]) -> dict[tuple[str, str], list[PriceOverride]]:
    out: dict[tuple[str, str], list[PriceOverride]] = {}
    for o in overrides:
        out.setdefault((o.provider, o.model), []).append(o)
    return out
