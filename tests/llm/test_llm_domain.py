"""The pure parts: token cost, override resolution by date, override parsing, the price store on SQLite and
PostgreSQL, and that genai-prices is used offline and only when a cost is asked for."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from billow.adapters.sql import SqlMetaStore
from billow.adapters.sql_llm_prices import SqlLlmPriceStore
from billow.domain.llm import (
    OPENMETER_TOKEN_TYPES,
    PriceOverride,
    TokenCounts,
    TokenPrices,
    Unpriceable,
    override_in_effect,
    parse_override,
    per_token_price,
    plain,
    token_cost,
)
from billow.errors import Conflict, ValidationFailed
from billow.ids import new_id
from billow.services.features import LLM_TOKEN_TYPES

D = Decimal
NOW = datetime(2026, 3, 10, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def override(id: str, effective_from: str | None, inp: str = "1", model: str = "m") -> PriceOverride:
    body = {"provider": "p", "model": model, "inputPerMillionTokens": inp, "outputPerMillionTokens": "2"}
    if effective_from:
        body["effectiveFrom"] = effective_from
    return parse_override(body, id=id, now=NOW)


def test_token_cost_is_exact_per_token_type() -> None:
    cost = token_cost(TokenCounts(input=D(1_000_003), cached_input=D(1), cache_write=D(2), output=D(7)),
                      TokenPrices(input=D("2.5"), output=D("10"), cached_input=D("1.25"), cache_write=D("3.125")))
    assert (cost.input, cost.cached_input, cost.cache_write, cost.output) == (
        D("2.5"), D("0.00000125"), D("0.00000625"), D("0.00007"))
    assert cost.total == D("2.50007750")
    assert plain(cost.total) == "2.5000775" and plain(D("1E+2")) == "100" and plain(D("0.000")) == "0"


def test_unpriceable_token_counts_are_refused() -> None:
    with pytest.raises(Unpriceable, match="exceed input_tokens"):
        token_cost(TokenCounts(input=D(10), cached_input=D(11)), TokenPrices(input=D(1), output=D(1)))
    with pytest.raises(Unpriceable, match="output"):
        token_cost(TokenCounts(input=D(10), output=D(1)), TokenPrices(input=D(1), output=None))
    # no output tokens: a missing output price does not matter
    assert token_cost(TokenCounts(input=D(10)), TokenPrices(input=D(1), output=None)).total == D("0.00001")


def test_the_override_in_effect_is_the_latest_not_after_the_instant() -> None:
    always, march, april = override("a", None), override("b", "2026-03-01"), override("c", "2026-04-01T00:00:00Z")
    found = [override_in_effect([april, always, march], datetime.fromisoformat(t)) for t in (
        "2026-02-28T23:59:59.999+00:00", "2026-03-01T00:00:00+00:00", "2026-03-31T23:00:00-01:00",
        "2026-04-01T00:00:00+00:00")]
    assert [o.id if o else None for o in found] == ["a", "b", "c", "c"]
    assert override_in_effect([march], datetime(2026, 2, 1, tzinfo=UTC)) is None


def test_override_parsing_names_every_bad_field() -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_override({"provider": 3, "inputPerMillionTokens": "1e3", "outputPerMillionTokens": True,
                        "cacheWritePerMillionTokens": D("NaN"), "currency": "usd", "effectiveFrom": 20260301},
                       id="x", now=NOW)
    assert [e["field"] for e in exc.value.errors] == [
        "provider", "model", "currency", "inputPerMillionTokens", "outputPerMillionTokens",
        "cacheWritePerMillionTokens", "effectiveFrom"]
    ok = parse_override({"provider": " OpenAI ", "model": "GPT-4o", "inputPerMillionTokens": 3,
                         "outputPerMillionTokens": D("0.10")}, id="x", now=NOW)
    assert (ok.provider, ok.model, ok.prices.input, ok.prices.output, ok.effective_from) == (
        "openai", "gpt-4o", D(3), D("0.10"), None)
    assert ok.to_json()["outputPerMillionTokens"] == "0.1"


@pytest.fixture
def price_store(meta_store: SqlMetaStore) -> SqlLlmPriceStore:
    store = SqlLlmPriceStore(meta_store.engine)
    store.migrate()
    return store


def test_price_store_contract(price_store: SqlLlmPriceStore) -> None:
    ns = f"llm-{new_id()}"  # the PostgreSQL database outlives the test run
    a, b = override(new_id(), "2026-03-01T12:30:00.5Z", "1.123456789012345678"), override(new_id(), None)
    price_store.put_override(ns, a)
    price_store.put_override(ns, b)
    price_store.put_override(ns + "-other", override(new_id(), None))
    assert price_store.list_overrides(ns) == [b, a]  # by effectiveFrom, "for all usage" first
    assert price_store.list_overrides(ns, "P", "M") == [b, a]
    assert price_store.list_overrides(ns, model="other") == []
    with pytest.raises(Conflict):
        price_store.put_override(ns, override(new_id(), "2026-03-01T12:30:00.500Z"))
    assert price_store.delete_override(ns + "-other", a.id) is False  # never across namespaces
    assert price_store.delete_override(ns, a.id) is True
    assert price_store.list_overrides(ns) == [b]


def test_genai_prices_is_offline_and_loaded_only_for_a_cost() -> None:
    """In a fresh process with every socket refused: the API handler imports without genai-prices; a cost
    report then prices from the bundled table."""
    script = textwrap.dedent("""
        import socket, sys, tempfile
        def refuse(*a, **k):
            raise OSError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import functions.api.handler
        assert "genai_prices" not in sys.modules, "genai-prices imported at cold start"
        from datetime import UTC, datetime
        from billow.services.llm_costs import GenaiPriceTable
        found = GenaiPriceTable().price("openai", "gpt-4o", datetime(2026, 3, 1, tzinfo=UTC))
        print(found.prices.input, found.prices.output, found.source)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2.5", "10", "genai-prices"]


def test_openmeter_token_types_map_to_billow_s_prices() -> None:
    assert tuple(OPENMETER_TOKEN_TYPES) == LLM_TOKEN_TYPES  # the features' vocabulary is the mapped one
    prices = TokenPrices(input=Decimal("2.5"), output=Decimal("10"), cached_input=Decimal("1.25"),
                         cache_write=Decimal("3.75"))
    got = {t: per_token_price(prices, t) for t in LLM_TOKEN_TYPES}
    assert got == {"input": Decimal("0.0000025"), "request": Decimal("0.0000025"), "output": Decimal("0.00001"),
                   "response": Decimal("0.00001"), "reasoning": Decimal("0.00001"),
                   "cache_read": Decimal("0.00000125"), "cache_write": Decimal("0.00000375")}
    bare = TokenPrices(input=Decimal("3"), output=None)
    assert per_token_price(bare, "cache_read") == per_token_price(bare, "cache_write") == Decimal("0.000003")
    for token_type in ("output", "reasoning", "cachedInput", "INPUT"):
        with pytest.raises(Unpriceable):
            per_token_price(bare, token_type)
