"""A feature's cost from its `unitCost` (GET /api/v1/features/{featureId}/cost, OpenMeter's queryFeatureCost shape):
OpenMeter's LLM token types (input, output, cache_read, reasoning, cache_write and the aliases request, response)
priced per token by Billow's LLM prices, exact. Before, a feature with OpenMeter's tokenType was kept and shown but
nothing priced it: Billow's cost report knows only its own token meters and names (input, cachedInput, cacheWrite,
output)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from tests.llm.conftest import Billow, send

D = Decimal
METER = {"slug": "ai_tokens", "eventType": "ai", "aggregation": "SUM", "valueProperty": "$.tokens",
         "groupBy": {"provider": "$.provider", "model": "$.model", "type": "$.type"}}
LLM_COST = {"type": "llm", "providerProperty": "provider", "modelProperty": "model", "tokenTypeProperty": "type"}
# openai/gpt-4o by override, USD per million tokens: no cache-write price (the input price then)
PRICE = {"provider": "openai", "model": "gpt-4o", "inputPerMillionTokens": "2", "outputPerMillionTokens": "8",
         "cachedInputPerMillionTokens": "0.5"}
# token type -> (tokens, USD per million it is priced at)
TOKENS = {"input": (2_000_000, "2"), "request": (1_000_000, "2"), "output": (500_000, "8"),
          "response": (200_000, "8"), "cache_read": (1_000_000, "0.5"), "reasoning": (100_000, "8"),
          "cache_write": (300_000, "2")}


def _events(model: str, tokens: dict[str, int], start: int = 0) -> list[dict[str, Any]]:
    return [{"specversion": "1.0", "id": f"{model}-{start + i}", "source": "app", "type": "ai", "subject": "customer_1",
             "time": "2026-03-02T12:00:00Z",
             "data": {"provider": "openai", "model": model, "type": token_type, "tokens": count}}
            for i, (token_type, count) in enumerate(tokens.items())]


def _setup(b: Billow) -> None:
    b.ok("POST", "/api/v1/meters", METER)
    b.ok("POST", "/api/v1/llm/prices", PRICE)
    send(b, _events("gpt-4o", {t: n for t, (n, _) in TOKENS.items()}))


def _cost(b: Billow, feature: str, **query: str) -> dict[str, Any]:
    return b.ok("GET", f"/api/v1/features/{feature}/cost" + ("?" + urlencode(query) if query else ""))


def test_each_openmeter_token_type_is_priced_at_billow_s_price_for_it(billow: Billow) -> None:
    _setup(billow)
    billow.ok("POST", "/api/v1/features", {"key": "ai", "name": "AI", "meterSlug": "ai_tokens", "unitCost": LLM_COST})
    by_type = _cost(billow, "ai", groupBy="type", **{"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"})
    assert by_type["currency"] == "USD" and by_type["complete"] is True
    got = {r["groupBy"]["type"]: (r["usage"], r["cost"]) for r in by_type["data"]}
    assert got == {t: (str(n), str(D(n) * D(p) / 1_000_000).rstrip("0").rstrip(".")) for t, (n, p) in TOKENS.items()}
    costs = [D(r["cost"]) for r in by_type["data"]]
    assert costs == sorted(costs, reverse=True)  # OpenMeter's order: the costliest first
    expected = sum(D(n) * D(p) / 1_000_000 for n, p in TOKENS.values())
    assert D(by_type["total"]) == expected == D("13.5")
    # not grouped: the pricing keys are added up into one row
    total = _cost(billow, "ai", **{"from": "2026-03-01T00:00:00Z"})
    assert [(r["usage"], r["cost"], r.get("groupBy")) for r in total["data"]] == [("5100000", "13.5", None)]
    # by day: the row's window start prices it
    days = _cost(billow, "ai", windowSize="DAY", **{"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"})
    assert [(r["windowStart"], r["cost"]) for r in days["data"]] == [("2026-03-02T00:00:00Z", "13.5")]


def test_a_static_token_type_and_the_feature_s_filters(billow: Billow) -> None:
    _setup(billow)
    billow.ok("POST", "/api/v1/features", {
        "key": "ai_reasoning", "name": "Reasoning", "meterSlug": "ai_tokens", "meterGroupByFilters": {"type": "reasoning"},
        "unitCost": {"type": "llm", "provider": "openai", "modelProperty": "model", "tokenType": "reasoning"}})
    out = _cost(billow, "ai_reasoning")
    assert [(r["usage"], r["cost"]) for r in out["data"]] == [("100000", "0.8")]  # 0.1M at the output price


def test_a_row_without_a_price_has_no_cost_and_says_why(billow: Billow) -> None:
    _setup(billow)
    send(billow, _events("no-such-model-xyz", {"input": 1000}, start=100))
    billow.ok("POST", "/api/v1/features", {"key": "ai", "name": "AI", "meterSlug": "ai_tokens", "unitCost": LLM_COST})
    out = _cost(billow, "ai", groupBy="model")
    rows = {r["groupBy"]["model"]: r for r in out["data"]}
    assert rows["gpt-4o"]["cost"] == "13.5"
    assert rows["no-such-model-xyz"]["cost"] is None and "no-such-model-xyz" in rows["no-such-model-xyz"]["detail"]
    assert out["complete"] is False and out["total"] == "13.5"
    # added up with a priced model, the row is not priced as if the unpriced part were free
    assert [r["cost"] for r in _cost(billow, "ai")["data"]] == [None]


def test_a_manual_unit_cost_and_the_400s(billow_memory: Billow) -> None:
    b = billow_memory
    _setup(b)
    b.ok("POST", "/api/v1/features", {"key": "flat", "name": "Flat", "meterSlug": "ai_tokens",
                                      "unitCost": {"type": "manual", "amount": "0.000001"}})
    assert [(r["usage"], r["cost"]) for r in _cost(b, "flat")["data"]] == [("5100000", "5.1")]
    b.ok("POST", "/api/v1/features", {"key": "free", "name": "Free", "meterSlug": "ai_tokens"})
    b.ok("POST", "/api/v1/features", {"key": "static", "name": "Static"})
    for feature, field in (("free", "unitCost"), ("static", "meterSlug")):
        status, problem = b.call("GET", f"/api/v1/features/{feature}/cost")
        assert (status, [e["field"] for e in problem["validationErrors"]]) == (400, [field])
    status, problem = b.call("GET", "/api/v1/features/flat/cost", query={"windowSize": "FORTNIGHT"})
    assert (status, problem["validationErrors"][0]["field"]) == (400, "windowSize")
    assert b.call("GET", "/api/v1/features/nope/cost")[0] == 404


def test_a_feature_shows_openmeter_s_pricing_where_its_model_is_known(billow_memory: Billow) -> None:
    # OpenMeter's readOnly unitCost.pricing (FeatureLLMUnitCostPricing) was never shown: a client reading a feature's
    # per-token prices found none.
    b = billow_memory
    b.ok("POST", "/api/v1/meters", METER)
    b.ok("POST", "/api/v1/llm/prices", PRICE)
    per_token = {"inputPerToken": "0.000002", "outputPerToken": "0.000008", "cacheReadPerToken": "0.0000005",
                 "cacheWritePerToken": "0.000002", "reasoningPerToken": "0.000008"}
    static = b.ok("POST", "/api/v1/features", {"key": "static", "name": "S", "meterSlug": "ai_tokens", "unitCost": {
        "type": "llm", "provider": "openai", "model": "gpt-4o", "tokenTypeProperty": "type"}})
    assert static["unitCost"]["pricing"] == per_token
    b.ok("POST", "/api/v1/features", {"key": "filtered", "name": "F", "meterSlug": "ai_tokens",
                                      "meterGroupByFilters": {"model": "gpt-4o"},
                                      "unitCost": {"type": "llm", "provider": "openai", "modelProperty": "model",
                                                   "tokenTypeProperty": "type"}})
    b.ok("POST", "/api/v1/features", {"key": "any_model", "name": "A", "meterSlug": "ai_tokens", "unitCost": LLM_COST})
    b.ok("POST", "/api/v1/features", {"key": "unknown", "name": "U", "meterSlug": "ai_tokens", "unitCost": {
        "type": "llm", "provider": "openai", "model": "no-such-model-xyz", "tokenType": "input"}})
    assert b.ok("GET", "/api/v1/features/filtered")["unitCost"]["pricing"] == per_token
    listed = {f["key"]: f["unitCost"].get("pricing") for f in b.ok("GET", "/api/v1/features")}
    assert listed == {"static": per_token, "filtered": per_token, "any_model": None, "unknown": None}
    paged = b.ok("GET", "/api/v1/features", query={"page": "1", "pageSize": "10"})
    assert {f["key"]: f["unitCost"].get("pricing") for f in paged["items"]} == listed
