"""A price list of many usage rate cards on one meter (an AI company's: one `tokens` meter, a feature per model) is
billed exactly however the billing run batches its usage reads: every line's quantity and lineage digest is what an
independent count of the events says (features with overlapping and disjoint filters on one meter, one with no
filter, features of a COUNT meter beside them, a UNIQUE_COUNT meter's features grouped apart), a feature whose
read fails fails only the subscriptions that bill it, and the usage-store statements of a run do not grow with the
number of features that share a meter. On the in-memory twin and on chdb."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from functions.billing_run.handler import BillingRunFailed
from tests.billing.conftest import Billow
from tests.support.billing import PROFILE, invoices, scheduled_run
from tests.support.catalog import published

Event = tuple[str, str, str, dict[str, Any]]  # type, subject, time, data
Matches = Callable[[str, dict[str, Any]], bool]  # (subject, data) -> whether the feature counts the event

# feature key -> (meter, stated filters, the same filter written independently as a Python predicate)
FEATURES: dict[str, tuple[str, dict[str, Any], Matches]] = {
    "gpt": ("tokens", {"meterGroupByFilters": {"model": "gpt"}}, lambda s, d: d.get("model") == "gpt"),
    "gpt_or_claude": ("tokens", {"advancedMeterGroupByFilters": {"model": {"$in": ["gpt", "claude"]}}},
                      lambda s, d: d.get("model") in ("gpt", "claude")),
    "not_gpt": ("tokens", {"advancedMeterGroupByFilters": {"model": {"$ne": "gpt"}}},
                lambda s, d: d.get("model", "") != "gpt"),  # events without a model too
    "c_models": ("tokens", {"advancedMeterGroupByFilters": {"model": {"$like": "c%"}}},
                 lambda s, d: str(d.get("model", "")).startswith("c")),
    "all_tokens": ("tokens", {}, lambda s, d: True),
    "calls_gpt": ("calls", {"meterGroupByFilters": {"model": "gpt"}}, lambda s, d: d.get("model") == "gpt"),
    "calls": ("calls", {}, lambda s, d: True),
    "users_gpt": ("users", {"meterGroupByFilters": {"model": "gpt"}}, lambda s, d: d.get("model") == "gpt"),
    "users": ("users", {}, lambda s, d: True),
}
EVENT_TYPE = {"tokens": "prompt", "calls": "call", "users": "login"}
CUSTOMERS = {"acme": ["customer_1", "customer_2"], "beta": ["customer_3"]}


def _events() -> list[Event]:
    """April usage of the three meters: models gpt, claude, codex, llama and none, exact decimals, every subject."""
    models = ["gpt", "claude", "codex", "llama", None]
    subjects = ["customer_1", "customer_2", "customer_3"]
    out: list[Event] = []
    for k in range(120):
        at = f"2026-04-{1 + k % 29:02d}T{k % 24:02d}:{k % 60:02d}:{k % 7:02d}.{k % 1000:03d}Z"
        data: dict[str, Any] = {"tokens": f"{k * 7 % 101}.{k % 10}{k % 3}", "user": f"u{k % 4}"}
        if (m := models[k % 5]) is not None:
            data["model"] = m
        out.append((("prompt", "prompt", "call", "login")[k % 4], subjects[k % 3], at, data))
    return out


def _world(b: Billow, feature_keys: list[str], *, plans: dict[str, list[str]] | None = None) -> None:
    """Meters calls (COUNT) and users (UNIQUE_COUNT) beside tokens (SUM), all grouped by model; the features; a plan
    of one unit-price card per feature (1 USD a unit) per customer (`plans`: customer -> its features, default all)."""
    b.ok("POST", "/api/v1/meters", {"slug": "calls", "eventType": "call", "aggregation": "COUNT",
                                    "groupBy": {"model": "$.model"}})
    b.ok("POST", "/api/v1/meters", {"slug": "users", "eventType": "login", "aggregation": "UNIQUE_COUNT",
                                    "valueProperty": "$.user", "groupBy": {"model": "$.model"}})
    b.ok("POST", "/api/v1/subjects", [{"key": "customer_3"}])
    for key in feature_keys:
        meter, filters, _ = FEATURES[key]
        b.ok("POST", "/api/v1/features", {"key": key, "name": key, "meterSlug": meter, **filters})
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    for customer, subjects in CUSTOMERS.items():
        b.ok("POST", "/api/v1/customers", {"key": customer, "name": customer.title(), "currency": "USD",
                                           "usageAttribution": {"subjectKeys": subjects}})
        cards = [{"type": "usage_based", "key": k, "name": k, "featureKey": k, "billingCadence": "P1M",
                  "price": {"type": "unit", "amount": "1"}} for k in (plans or {}).get(customer, feature_keys)]
        published(b, {"key": f"plan_{customer}", "name": customer, "currency": "USD", "billingCadence": "P1M",
                      "phases": [{"key": "default", "name": "Default", "rateCards": cards}]})
        b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": f"plan_{customer}"}, "customerKey": customer,
                                               "timing": "2026-04-01T00:00:00Z"})


def _expected(events: list[Event], key: str, subjects: list[str]) -> tuple[Decimal, int, Decimal, str]:
    """(quantity, events, sum, key hash) of feature `key` over `subjects`' April events, counted here."""
    meter, _, counts = FEATURES[key]
    ids = [(n, e) for n, e in enumerate(events, 1) if e[0] == EVENT_TYPE[meter] and e[1] in subjects and counts(e[1], e[3])]
    values = [Decimal(e[3]["tokens"]) if meter == "tokens" else Decimal(1) if meter == "calls" else Decimal(0)
              for _, e in ids]  # (a UNIQUE_COUNT's values are strings: its digest sums nothing)
    quantity = (sum(values, Decimal(0)) if meter == "tokens" else Decimal(len(ids)) if meter == "calls"
                else Decimal(len({e[3]["user"] for _, e in ids})))
    keys = sorted(("test", f"e{n}") for n, _ in ids)
    key_hash = hashlib.sha256("".join(f"{s}\0{i}\n" for s, i in keys).encode()).hexdigest()
    return quantity, len(ids), sum(values, Decimal(0)), key_hash


def _april(b: Billow, feature_keys: list[str], **kw: Any) -> tuple[list[Event], dict[str, Any]]:
    _world(b, feature_keys, **kw)
    events = _events()
    b.send_events(*events)
    b.clock.set("2026-05-01T00:10:00Z")
    return events, scheduled_run(b)


def test_each_line_of_many_features_on_one_meter_is_its_own_events_exactly(billow: Billow) -> None:
    b = billow
    events, run = _april(b, list(FEATURES))
    assert run["failures"] == []
    billed = {i["customer"]["key"]: i for i in invoices(b)}
    assert set(billed) == set(CUSTOMERS)
    for customer, subjects in CUSTOMERS.items():
        lines = {ln["featureKey"]: ln for ln in billed[customer]["lines"] if ln.get("featureKey")}
        got = {k: Decimal(ln["quantity"]) for k, ln in lines.items()}
        want = {k: _expected(events, k, subjects)[0] for k in FEATURES}
        assert got == {k: q for k, q in want.items() if q}, customer  # a line per feature that has usage
        for k, ln in lines.items():
            _, n, total, key_hash = _expected(events, k, subjects)
            assert ln["lineage"]["digest"] == {"events": n, "sum": "0" if total == 0 else format(total.normalize(), "f"),
                                               "hash": f"sha256:{key_hash}"}, (customer, k)
            assert ln["lineage"]["subjects"] == sorted(subjects)
    # Sanity of the fixture: the filters overlap (gpt in three features) and differ.
    acme = {ln["featureKey"]: Decimal(ln["quantity"]) for ln in billed["acme"]["lines"] if ln.get("featureKey")}
    assert acme["gpt"] + acme["not_gpt"] == acme["all_tokens"] and acme["gpt"] < acme["gpt_or_claude"] < acme["all_tokens"]
    assert scheduled_run(b)["invoices"] == []  # a re-run bills nothing


def test_a_feature_whose_read_fails_fails_only_the_subscriptions_that_bill_it(billow: Billow) -> None:
    """The read of a feature filtering on model `poison` fails (an engine error on that filter): acme, whose plan
    bills it, is left for the next run; beta, billing the other features of the same meter, is billed exactly."""
    b = billow
    FEATURES["poison"] = ("tokens", {"meterGroupByFilters": {"model": "poison"}}, lambda s, d: d.get("model") == "poison")
    real = b.c.usage
    b.c.usage = PoisonedUsage(real)
    keys = ["gpt", "not_gpt", "all_tokens", "calls_gpt", "users"]
    try:
        with pytest.raises(BillingRunFailed) as failed:
            _april(b, keys + ["poison"], plans={"acme": keys + ["poison"], "beta": keys})
    finally:
        b.c.usage = real
        del FEATURES["poison"]
    customers = {c["id"]: c["key"] for c in b.ok("GET", "/api/v1/customers")["items"]}
    assert [customers[f["customerId"]] for f in failed.value.failures] == ["acme"]
    assert "poison" in failed.value.failures[0]["reason"]
    events = _events()
    (beta,) = invoices(b)
    assert beta["customer"]["key"] == "beta"
    got = {ln["featureKey"]: Decimal(ln["quantity"]) for ln in beta["lines"] if ln.get("featureKey")}
    assert got == {k: _expected(events, k, ["customer_3"])[0] for k in keys} and all(got.values())


class PoisonedUsage:
    """The usage store, failing every read whose filters name the model `poison` (alone or among others)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @staticmethod
    def _check(filter_sets: Any) -> None:
        if any(f.value == "poison" for fs in filter_sets for conj in fs for f in conj):
            raise RuntimeError("the engine refused the filter on model 'poison'")

    def aggregate(self, q: Any) -> Any:
        self._check([q.filters])
        return self.inner.aggregate(q)

    def aggregate_each(self, q: Any, filter_sets: Any) -> Any:
        self._check(filter_sets)
        return self.inner.aggregate_each(q, filter_sets)

    def line_digests(self, namespace: str, meter_id: str, start: Any, end: Any, filters: Any, groups: Any) -> Any:
        self._check([filters])
        return self.inner.line_digests(namespace, meter_id, start, end, filters, groups)

    def line_digests_each(self, namespace: str, meter_id: str, start: Any, end: Any, filter_sets: Any,
                          groups: Any) -> Any:
        self._check(filter_sets)
        return self.inner.line_digests_each(namespace, meter_id, start, end, filter_sets, groups)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("features", [2, 12])
def test_the_usage_statements_of_a_run_do_not_grow_with_the_features_sharing_a_meter(
        chdb_store: Any, tmp_path: Any, namespace: str, features: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the real chdb store: the run at May 1 reads the tokens meter once per span (the ended April period, the
    begun May one) and digests its April lines once, for 2 features as for 12 (one per model)."""
    from billow.bootstrap import Settings, build, install
    from functions.usage_sink.handler import lambda_handler as sink
    from tests.entitlements.conftest import METERS, Clock

    clock = Clock("2026-01-01T00:00:00Z")
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), namespace=namespace, meters=METERS)),
              deliver=lambda ev: sink(ev, None))
    own, c.usage, c.clock = c.usage, chdb_store, clock
    install(c)
    try:
        b = Billow(c, clock)
        b.ok("POST", "/api/v1/subjects", [{"key": "customer_1"}])
        b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                           "usageAttribution": {"subjectKeys": ["customer_1"]}})
        b.ok("POST", "/api/v1/billing/profiles", PROFILE)
        for m in range(features):
            b.ok("POST", "/api/v1/features", {"key": f"m{m}", "name": f"m{m}", "meterSlug": "tokens",
                                              "meterGroupByFilters": {"model": f"model-{m}"}})
        b.clock.set("2026-03-31T00:00:00Z")
        published(b, {"key": "ai", "name": "AI", "currency": "USD", "billingCadence": "P1M", "phases": [
            {"key": "default", "name": "Default", "rateCards": [
                {"type": "usage_based", "key": f"m{m}", "name": f"m{m}", "featureKey": f"m{m}", "billingCadence": "P1M",
                 "price": {"type": "unit", "amount": "0.5"}} for m in range(features)]}]})
        b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "ai"}, "customerKey": "acme",
                                               "timing": "2026-04-01T00:00:00Z"})
        b.send_events(*[("prompt", "customer_1", f"2026-04-{1 + k:02d}T10:00:00Z", {"tokens": f"{k}.5", "model": f"model-{m}"})
                        for m in range(features) for k in range(3)])
        sent: list[str] = []
        real = chdb_store._run_query
        monkeypatch.setattr(chdb_store, "_run_query", lambda sql, params, *a, **kw: (sent.append(sql),
                                                                                   real(sql, params, *a, **kw))[1])
        b.clock.set("2026-05-01T00:10:00Z")
        run = scheduled_run(b)
        monkeypatch.undo()
        assert run["failures"] == [] and len(run["invoices"]) == 1
        (inv,) = invoices(b)
        assert {ln["featureKey"]: Decimal(ln["quantity"]) for ln in inv["lines"]} == {
            f"m{m}": Decimal("4.5") for m in range(features)}
        digests = [s for s in sent if "SHA256" in s]
        assert (len(sent) - len(digests), len(digests)) == (2, 1), sent
    finally:
        install(None)
        c.usage = own
        c.close()
