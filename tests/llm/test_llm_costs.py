"""LLM cost tracking end to end: `llm` events ingested through the ingest handler into the usage store (the
in-memory twin and chdb), costed by GET /api/v1/llm/costs against genai-prices' bundled table and the user's
price overrides."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from billow.adapters.sql_llm_prices import SqlLlmPriceStore
from billow.domain.money import ROUND_HALF_UP, round_money
from billow.domain.pricing import DynamicPrice, rate
from billow.services.llm_costs import UnpricedUsage, llm_cost
from tests.llm.conftest import Billow, send
from tests.llm.stream import START, expected_by, llm_event, stream, tokens_by_model

D = Decimal
MILLION = D(1_000_000)


def install(b: Billow, **body: Any) -> None:
    b.ok("POST", "/api/v1/llm/meters", body)


def costs(b: Billow, **query: Any) -> dict[str, Any]:
    from urllib.parse import urlencode

    status, out = b.call("GET", "/api/v1/llm/costs?" + urlencode(query, doseq=True))
    assert status == 200, out
    return out


def per_group(report: dict[str, Any], *keys: str) -> dict[tuple[str, ...], Decimal]:
    """Cost per group summed over windows, from the report's decimal strings."""
    out: dict[tuple[str, ...], Decimal] = defaultdict(Decimal)
    for row in report["data"]:
        out[tuple(row["groupBy"][k] for k in keys)] += D(row["cost"]["total"])
    return dict(out)


def cents(value: Decimal) -> Decimal:
    return round_money(value, "USD", ROUND_HALF_UP)


def test_meters_install_idempotently(billow: Billow) -> None:
    status, first = billow.call("POST", "/api/v1/llm/meters", {})
    assert status == 201
    assert first["created"] == ["llm_input_tokens", "llm_cached_input_tokens", "llm_cache_write_tokens",
                                "llm_output_tokens"]
    for m in first["meters"]:
        assert (m["aggregation"], m["eventType"]) == ("SUM", "llm")
        assert set(m["groupBy"]) == {"provider", "model", "customer", "team", "feature"}
    status, again = billow.call("POST", "/api/v1/llm/meters")  # no body: the same
    assert status == 200 and again["created"] == []
    for blank in (b"\t", b" ", b"\n"):  # not JSON (the fuzz suite's case): a 400, as any bad body, not no body
        status, out = billow.raw("POST", "/api/v1/llm/meters", blank)
        assert status == 400 and out["status"] == 400, (blank, out)
    assert [m["id"] for m in again["meters"]] == [m["id"] for m in first["meters"]]


def test_meter_of_the_same_slug_with_another_definition_is_a_conflict(billow: Billow) -> None:
    billow.ok("POST", "/api/v1/meters", {"slug": "llm_output_tokens", "eventType": "completion",
                                          "aggregation": "SUM", "valueProperty": "$.tokens"})
    status, out = billow.call("POST", "/api/v1/llm/meters", {})
    assert status == 409 and "llm_output_tokens" in out["detail"]


def test_stream_is_costed_per_model_as_genai_prices_computes_it(billow: Billow) -> None:
    install(billow)
    events = stream()
    send(billow, events)
    report = costs(billow, **{"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T23:59:59.999Z",
                              "groupBy": ["provider", "model"]})
    assert report["complete"] is True and report["unpriced"] == []
    assert (report["currency"], report["windowSize"], report["windowTimeZone"]) == ("USD", "DAY", "UTC")
    assert sorted({r["windowStart"] for r in report["data"]}) == [
        "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z"]
    want = expected_by(events, "provider", "model")
    got = per_group(report, "provider", "model")
    assert got == want  # exact, digit for digit
    assert {k: cents(v) for k, v in got.items()} == {k: cents(v) for k, v in want.items()}
    assert D(report["total"]) == sum(want.values())
    # every row's breakdown adds up to its total, and the tokens are the stream's
    for row in report["data"]:
        c = row["cost"]
        assert D(c["input"]) + D(c["cachedInput"]) + D(c["cacheWrite"]) + D(c["output"]) == D(c["total"])
        assert row["prices"][0]["source"] == "genai-prices"
    gemini = [r for r in report["data"] if r["groupBy"]["model"] == "gemini-2.5-pro"]
    assert any("tiered" in note for note in gemini[0]["prices"][0]["notes"])


def test_two_models_by_hand_from_published_prices(billow: Billow) -> None:
    """gpt-4o: $2.50 input, $1.25 cached input, $10 output per million tokens; claude-3-5-haiku: $0.80 input,
    $0.08 cache read, $1 cache write, $4 output."""
    install(billow)
    events = stream()
    send(billow, events)
    got = per_group(costs(billow, groupBy="model"), "model")
    for model, (inp, cached, write, out) in {"gpt-4o": ("2.5", "1.25", "2.5", "10"),
                                             "claude-3-5-haiku-latest": ("0.8", "0.08", "1", "4")}.items():
        t = tokens_by_model(events, model)
        uncached = t["input_tokens"] - t["cached_input_tokens"] - t["cache_write_tokens"]
        by_hand = (uncached * D(inp) + t["cached_input_tokens"] * D(cached) + t["cache_write_tokens"] * D(write)
                   + t["output_tokens"] * D(out)) / MILLION
        assert got[(model,)] == by_hand
    assert got[("gpt-4o",)] > 0 and tokens_by_model(events, "claude-3-5-haiku-latest")["cache_write_tokens"] > 0


def test_group_by_customer_and_team_adds_up_to_the_model_costs(billow: Billow) -> None:
    install(billow)
    events = stream()
    send(billow, events)
    by_team = per_group(costs(billow, groupBy=["customer", "team"]), "customer", "team")
    assert by_team == expected_by(events, "customer", "team")
    by_subject = costs(billow, groupBy="subject")
    assert {r["subject"] for r in by_subject["data"]} == {"acme", "globex"}
    assert sum(D(r["cost"]["total"]) for r in by_subject["data"]) == D(by_subject["total"])
    one = costs(billow, subject="globex", windowSize="MONTH", windowTimeZone="Europe/Berlin")
    globex = [e for e in events if e["subject"] == "globex"]
    assert D(one["total"]) == sum(expected_by(globex, "model").values())
    assert [r["windowStart"] for r in one["data"]] == ["2026-02-28T23:00:00Z"]  # March in Berlin, one group


def test_cost_report_reads_the_token_meters_in_one_grouped_query(billow: Billow) -> None:
    """The report asks the usage store once for every token meter's sums per group (aggregated in ClickHouse),
    not once per meter with a row per meter and group to add up in Python; the answer is the same. Since issue 17
    item 6 that one call is rated_sums (the store also prices the groups and adds them up to the report's lines)."""
    install(billow)
    events = stream()
    send(billow, events)
    store, calls = billow.c.usage, []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            if name in ("aggregate", "sum_meters", "rated_sums"):
                calls.append(name)
            return getattr(store, name)

    billow.c.usage = Counting()
    try:
        by_team = per_group(costs(billow, groupBy=["customer", "team"]), "customer", "team")
    finally:
        billow.c.usage = store
    assert calls == ["rated_sums"]
    assert by_team == expected_by(events, "customer", "team")


def test_override_beats_the_table(billow: Billow) -> None:
    install(billow)
    at = datetime(2026, 3, 2, 12, tzinfo=UTC)
    send(billow, [llm_event(1, "openai", "gpt-4o", at, input_tokens=2_000_000, cached=1_000_000, output_tokens=500_000)])
    table = D(costs(billow)["total"])
    assert table == D("2.5") + D("1.25") + D("5")  # 1M uncached, 1M cached, 0.5M output
    price = billow.ok("POST", "/api/v1/llm/prices", {"provider": "OpenAI", "model": "gpt-4o", "currency": "USD",
                                                     "inputPerMillionTokens": "2", "outputPerMillionTokens": 8,
                                                     "cachedInputPerMillionTokens": "0.5"})
    report = costs(billow)
    assert D(report["total"]) == D("2") + D("0.5") + D("4")
    assert report["data"][0]["prices"] == [{"provider": "openai", "model": "gpt-4o", "source": "override",
                                            "ref": price["id"]}]
    assert report["data"][0]["cost"] == {"input": "2", "cachedInput": "0.5", "cacheWrite": "0", "output": "4",
                                         "total": "6.5"}
    billow.ok("DELETE", f"/api/v1/llm/prices/{price['id']}")
    assert D(costs(billow)["total"]) == table


def test_price_history_by_date(billow: Billow) -> None:
    install(billow)
    days = [datetime(2026, 3, d, 9, tzinfo=UTC) for d in (14, 15, 16, 17)]
    send(billow, [llm_event(i, "acme-ai", "house-1", at, input_tokens=1_000_000, output_tokens=1_000_000)
                  for i, at in enumerate(days)])
    for body in ({"effectiveFrom": "2026-03-15", "inputPerMillionTokens": "1", "outputPerMillionTokens": "2"},
                 {"effectiveFrom": "2026-03-17T00:00:00+00:00", "inputPerMillionTokens": "3", "outputPerMillionTokens": "4"}):
        billow.ok("POST", "/api/v1/llm/prices", {"provider": "acme-ai", "model": "house-1", **body})
    report = costs(billow, **{"from": "2026-03-14T00:00:00Z"})
    assert {r["windowStart"]: r["cost"]["total"] for r in report["data"]} == {
        "2026-03-15T00:00:00Z": "3", "2026-03-16T00:00:00Z": "3", "2026-03-17T00:00:00Z": "7"}
    # before the first override there is no price at all: listed, flagged, never zero
    assert [(u["windowStart"], u["unpriced"]) for u in report["unpriced"]] == [("2026-03-14T00:00:00Z", True)]
    assert report["complete"] is False and D(report["total"]) == 13


def test_table_price_history_by_date(billow: Billow) -> None:
    """genai-prices raised mistral-small-latest from $0.10/$0.30 to $0.15/$0.60 on 2026-03-16."""
    install(billow)
    send(billow, [llm_event(i, "mistral", "mistral-small-latest", datetime(2026, 3, d, 23, 59, tzinfo=UTC),
                            input_tokens=1_000_000, output_tokens=1_000_000) for i, d in enumerate((15, 16))])
    report = costs(billow)
    assert [(r["windowStart"], r["cost"]["total"]) for r in report["data"]] == [
        ("2026-03-15T00:00:00Z", "0.4"), ("2026-03-16T00:00:00Z", "0.75")]
    # an override from the 16th on replaces the table's new price only
    billow.ok("POST", "/api/v1/llm/prices", {"provider": "mistral", "model": "mistral-small-latest",
                                             "effectiveFrom": "2026-03-16T00:00:00Z",
                                             "inputPerMillionTokens": "0", "outputPerMillionTokens": "1"})
    assert [r["cost"]["total"] for r in costs(billow)["data"]] == ["0.4", "1"]


def test_unknown_model_is_flagged_not_zero(billow: Billow) -> None:
    install(billow)
    at = datetime(2026, 3, 2, 8, tzinfo=UTC)
    send(billow, [llm_event(1, "openai", "gpt-4o", at, input_tokens=1_000_000, output_tokens=0),
                  llm_event(2, "openai", "gpt-99-imaginary", at, input_tokens=123, output_tokens=45, cached=3, team="x"),
                  llm_event(3, "nowhere", "thing", at, input_tokens=7, output_tokens=8)])
    report = costs(billow, groupBy="team")
    assert report["complete"] is False and D(report["total"]) == D("2.5")
    flagged = {(u["groupBy"]["provider"], u["groupBy"]["model"]): u for u in report["unpriced"]}
    assert set(flagged) == {("openai", "gpt-99-imaginary"), ("nowhere", "thing")}
    imaginary = flagged[("openai", "gpt-99-imaginary")]
    assert imaginary["unpriced"] is True and imaginary["groupBy"]["team"] == "x"
    assert imaginary["tokens"] == {"input": 123, "cachedInput": 3, "cacheWrite": 0, "output": 45}
    assert "gpt-99-imaginary" in imaginary["reason"] and "cost" not in imaginary
    billow.ok("POST", "/api/v1/llm/prices", {"provider": "openai", "model": "gpt-99-imaginary",
                                             "inputPerMillionTokens": "1000000", "outputPerMillionTokens": "0"})
    assert D(costs(billow)["total"]) == D("2.5") + D(123)  # cached tokens at the input price when none is given


def test_llm_cost_feeds_a_dynamic_price(billow: Billow) -> None:
    install(billow)
    events = stream()
    send(billow, events)
    c = billow.c
    store = c.store(SqlLlmPriceStore)
    start, end = START, datetime(2026, 4, 1, tzinfo=UTC)
    cost = llm_cost(c.namespace, subject="acme", period_start=start, period_end=end, meta=c.meta, usage=c.usage,
                    store=store)
    acme = [e for e in events if e["subject"] == "acme"]
    assert cost == sum(expected_by(acme, "model").values())
    lines = rate(DynamicPrice(multiplier=D("1.25")), cost, currency="USD", rounding=ROUND_HALF_UP,
                 period_start=start, period_end=end)
    assert [(ln.quantity, ln.amount, ln.amount_rounded) for ln in lines] == [
        (cost, cost * D("1.25"), round_money(cost * D("1.25"), "USD", ROUND_HALF_UP))]
    # a customer: all its subjects; the period is half-open (an event at period_end is the next period's)
    billow.ok("POST", "/api/v1/customers", {"name": "Both", "key": "both",
                                            "usageAttribution": {"subjectKeys": ["acme", "globex"]}})
    send(billow, [llm_event(999, "openai", "gpt-4o", end, input_tokens=1_000_000)])
    both = llm_cost(c.namespace, customer="both", period_start=start, period_end=end, meta=c.meta, usage=c.usage,
                    store=store)
    assert both == sum(expected_by(events, "model").values())
    # usage without a price: the cost cannot be stated, so it is refused, not undercounted
    send(billow, [llm_event(1000, "nowhere", "thing", datetime(2026, 3, 5, tzinfo=UTC))])
    with pytest.raises(UnpricedUsage) as exc:
        llm_cost(c.namespace, subject="acme", period_start=start, period_end=end, meta=c.meta, usage=c.usage,
                 store=store)
    assert "nowhere/thing" in exc.value.detail and exc.value.status == 409


def test_cache_meters_are_optional(billow: Billow) -> None:
    install(billow, cacheTokens=False)
    ev = llm_event(1, "openai", "gpt-4o", datetime(2026, 3, 2, tzinfo=UTC), input_tokens=1_000_000, output_tokens=0)
    del ev["data"]["cached_input_tokens"], ev["data"]["cache_write_tokens"]
    send(billow, [ev])
    assert costs(billow)["total"] == "2.5"
    install(billow)  # now with the cache meters (the stored event has no cache counts: none are backfilled)
    assert costs(billow)["total"] == "2.5"
    # ... and from now on every event must carry both counts
    ev2 = {**ev, "id": "again"}
    status, out = billow.call("POST", "/api/v1/events", [ev2], content_type="application/cloudevents-batch+json")
    assert status == 400 and "cached_input_tokens" in out["detail"]


def test_costs_need_the_meters(billow: Billow) -> None:
    status, out = billow.call("GET", "/api/v1/llm/costs")
    assert status == 404 and "/api/v1/llm/meters" in out["detail"]


BAD_PRICES = [
    ({"inputPerMillionTokens": "-1"}, "inputPerMillionTokens"),
    ({"outputPerMillionTokens": -2}, "outputPerMillionTokens"),
    ({"cachedInputPerMillionTokens": "abc"}, "cachedInputPerMillionTokens"),
    ({"currency": "XYZ"}, "currency"),
    ({"currency": "EUR"}, "currency"),
    ({"effectiveFrom": "2026-02-30"}, "effectiveFrom"),
    ({"effectiveFrom": "yesterday"}, "effectiveFrom"),
    ({"effectiveFrom": "2026-03-01T00:00:00"}, "effectiveFrom"),  # no offset
    ({"provider": ""}, "provider"),
    ({"model": None}, "model"),
    ({"inputPerMillionTokens": None}, "inputPerMillionTokens"),
    ({"inputPrice": "1"}, "inputPrice"),
]


@pytest.mark.parametrize(("change", "field"), BAD_PRICES)
def test_bad_price_is_a_400_naming_the_field(billow_memory: Billow, change: dict[str, Any], field: str) -> None:
    body = {"provider": "openai", "model": "gpt-4o", "inputPerMillionTokens": "1", "outputPerMillionTokens": "2",
            **change}
    status, out = billow_memory.call("POST", "/api/v1/llm/prices", body)
    assert status == 400, out
    assert field in [e["field"] for e in out["validationErrors"]], out
    assert billow_memory.ok("GET", "/api/v1/llm/prices") == []


def test_price_listing_duplicates_and_deletes(billow_memory: Billow) -> None:
    body = {"provider": "openai", "model": "gpt-4o", "inputPerMillionTokens": "1", "outputPerMillionTokens": "2",
            "effectiveFrom": "2026-03-01"}
    first = billow_memory.ok("POST", "/api/v1/llm/prices", body)
    status, out = billow_memory.call("POST", "/api/v1/llm/prices", {**body, "effectiveFrom": "2026-03-01T00:00:00Z"})
    assert status == 409, out
    billow_memory.ok("POST", "/api/v1/llm/prices", {**body, "model": "gpt-4o-mini"})
    assert [p["model"] for p in billow_memory.ok("GET", "/api/v1/llm/prices", query={"model": "gpt-4o"})] == ["gpt-4o"]
    assert billow_memory.call("DELETE", "/api/v1/llm/prices/nope")[0] == 404
    assert billow_memory.call("DELETE", f"/api/v1/llm/prices/{first['id']}")[0] == 204
    assert [p["model"] for p in billow_memory.ok("GET", "/api/v1/llm/prices")] == ["gpt-4o-mini"]


@pytest.mark.parametrize(("query", "field"), [
    ({"groupBy": "region"}, "groupBy"),
    ({"from": "2026-13-01T00:00:00Z"}, "from"),
    ({"to": "tomorrow"}, "to"),
    ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "from"),
    ({"windowSize": "WEEK"}, "windowSize"),
    # Found by the fuzz on PostgreSQL (BILLOW_FUZZ_SEED=13, BILLOW_FUZZ_SCALE=5): an empty windowSize was taken for
    # none (DAY) and answered 200.
    ({"windowSize": ""}, "windowSize"),
    ({"windowTimeZone": "Mars/Olympus"}, "windowTimeZone"),
])
def test_bad_cost_query_is_a_400_naming_the_field(billow_memory: Billow, query: dict[str, str], field: str) -> None:
    install(billow_memory)
    status, out = billow_memory.call("GET", "/api/v1/llm/costs?" + urlencode(query))
    assert status == 400, out
    assert out["validationErrors"][0]["field"] == field


def test_report_by_customer_prices_each_model_once_per_window_and_flags_the_rows_it_cannot_price(
        billow: Billow, monkeypatch: pytest.MonkeyPatch) -> None:
    """By customer, the lines add every model's rows up (issue 17 item 6): each (window, provider, model) is
    priced once, not once per customer row, and the rows no price covers, or whose cached tokens exceed their input
    tokens, are still listed one by one as unpriced, never counted as zero."""
    from billow.services import llm_costs

    install(billow)
    at = datetime(2026, 3, 2, 8, tzinfo=UTC)
    send(billow, [
        llm_event(1, "openai", "gpt-4o", at, input_tokens=1_000_000, cached=200_000, output_tokens=100_000, customer="c1"),
        llm_event(2, "openai", "gpt-4o", at, input_tokens=400_000, output_tokens=0, customer="c2"),
        llm_event(3, "openai", "gpt-99-imaginary", at, input_tokens=5, output_tokens=5, customer="c2"),
        llm_event(4, "openai", "gpt-4o-mini", at, input_tokens=10, cached=20, output_tokens=0, customer="c3"),
        llm_event(5, "openai", "gpt-4o", at, input_tokens=4_000, output_tokens=0, customer="c3"),
        llm_event(6, "openai", "gpt-4o-mini", at, input_tokens=1_000_000, output_tokens=0, customer="c1"),
    ])
    asked: list[tuple[str, str, datetime]] = []
    price = llm_costs.PriceBook.price
    monkeypatch.setattr(llm_costs.PriceBook, "price", lambda self, p, m, t: asked.append((p, m, t)) or price(self, p, m, t))
    report = costs(billow, groupBy="customer")
    day = datetime(2026, 3, 2, tzinfo=UTC)
    assert sorted(asked) == [("openai", m, day) for m in ("gpt-4o", "gpt-4o-mini", "gpt-99-imaginary")]
    mini = D("0.15")  # gpt-4o-mini input per million tokens
    assert {r["groupBy"]["customer"]: D(r["cost"]["total"]) for r in report["data"]} == {
        "c1": D("2") + D("0.25") + D("1") + mini, "c2": D(1), "c3": D("0.01")}
    assert [(r["groupBy"]["customer"], [p["model"] for p in r["prices"]]) for r in report["data"]] == [
        ("c1", ["gpt-4o", "gpt-4o-mini"]), ("c2", ["gpt-4o"]), ("c3", ["gpt-4o"])]
    assert report["data"][0]["tokens"] == {"input": 2_000_000, "cachedInput": 200_000, "cacheWrite": 0, "output": 100_000}
    assert D(report["total"]) == D("4.26") + mini and report["complete"] is False
    unpriced = {(u["groupBy"]["customer"], u["groupBy"]["model"]): u for u in report["unpriced"]}
    assert set(unpriced) == {("c2", "gpt-99-imaginary"), ("c3", "gpt-4o-mini")}
    assert "exceed input_tokens" in unpriced[("c3", "gpt-4o-mini")]["reason"]
    assert unpriced[("c3", "gpt-4o-mini")]["tokens"] == {"input": 10, "cachedInput": 20, "cacheWrite": 0, "output": 0}
    assert "gpt-99-imaginary" in unpriced[("c2", "gpt-99-imaginary")]["reason"]


def test_by_customer_the_totals_are_the_model_totals_to_the_last_digit(billow: Billow) -> None:
    """The report by customer (priced and added up in the usage store: rated_sums) and by model (the store's rows
    priced in Python) over the same usage: per window and in all, the customers' costs add up to the models' costs
    exactly, and so do the tokens and the unpriced rows. The usage includes a model whose only tokens that day are
    output tokens of an event without input_tokens, sent while only the output meter existed (the input meter,
    installed later, has no value of it: a rate key the store does not find among the input tokens, where it looks
    first), and a model no price covers."""
    from billow.domain.llm import meter_definitions

    billow.ok("POST", "/api/v1/meters", meter_definitions(False)[-1])  # llm_output_tokens alone
    later = datetime(2026, 3, 3, 9, tzinfo=UTC)
    out_only = llm_event(900, "openai", "gpt-4.1", later, output_tokens=70_001, customer="acme")
    del out_only["data"]["input_tokens"], out_only["data"]["cached_input_tokens"], out_only["data"]["cache_write_tokens"]
    send(billow, [out_only])
    install(billow)
    events = [*stream(), llm_event(901, "openai", "gpt-99-imaginary", later, customer="globex")]
    send(billow, events)
    span = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T23:59:59.999Z"}
    by_customer, by_model = costs(billow, groupBy="customer", **span), costs(billow, groupBy="model", **span)
    by_subject = costs(billow, groupBy="subject", **span)

    def per_window(report: dict[str, Any]) -> dict[str, tuple[Decimal, ...]]:
        out: dict[str, tuple[Decimal, ...]] = {}
        for r in report["data"]:
            t = r["tokens"]
            add = (D(r["cost"]["total"]), D(r["cost"]["output"]), D(t["input"]), D(t["output"]), D(t["cachedInput"]))
            out[r["windowStart"]] = tuple(a + b for a, b in zip(out.get(r["windowStart"], (D(0),) * 5), add, strict=True))
        return out

    assert per_window(by_customer) == per_window(by_model) == per_window(by_subject)
    assert D(by_customer["total"]) == D(by_model["total"]) == D(by_subject["total"])
    assert by_customer["cost"] == by_model["cost"]
    assert D(by_customer["total"]) == sum(expected_by(events[:-1], "model").values()) + D(70_001) * D(8) / MILLION
    gpt41 = [r for r in by_customer["data"] if any(p["model"] == "gpt-4.1" for p in r["prices"])]
    assert [(r["windowStart"], r["groupBy"]["customer"]) for r in gpt41] == [("2026-03-03T00:00:00Z", "acme")]
    assert [(u["groupBy"]["customer"], u["groupBy"]["model"]) for u in by_customer["unpriced"]] == [
        ("globex", "gpt-99-imaginary")]
    assert [u["groupBy"]["model"] for u in by_model["unpriced"]] == ["gpt-99-imaginary"]


def test_the_served_document_says_effective_from_takes_a_date(billow_memory: Billow) -> None:
    # It said a date-time alone, while a YYYY-MM-DD date is taken (its midnight in UTC): a client validating its
    # request against the document could not send what docs/llm-costs.md shows.
    doc = billow_memory.ok("GET", "/api/v1/openapi.json")
    body = doc["paths"]["/api/v1/llm/prices"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    formats = {branch.get("format") for branch in body["properties"]["effectiveFrom"]["anyOf"]}
    assert formats == {"date-time", "date"}
    price = billow_memory.ok("POST", "/api/v1/llm/prices", {"provider": "openai", "model": "gpt-4o",
                                                            "inputPerMillionTokens": "1", "outputPerMillionTokens": "2",
                                                            "effectiveFrom": "2026-03-01"})
    assert price["effectiveFrom"] == "2026-03-01T00:00:00Z"
