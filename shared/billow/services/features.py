"""Features: what a customer can be entitled to. A feature is metered when it names a meter (and may narrow
the meter's usage with group-by filters), static/boolean otherwise. Archiving is final."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from billow.domain import fields
from billow.domain.catalog import KEY_RE
from billow.domain.llm import MODEL_MAX, OPENMETER_TOKEN_TYPES, PROVIDER_MAX, plain
from billow.errors import NotFound, ValidationFailed
from billow.exact import parse_decimal
from billow.ids import new_id
from billow.ports import MetaStore
from billow.services import pages, params
from billow.services.query import parse_filters
from billow.timeutil import format_rfc3339

# Meters whose value over a span can be burned against credit. MIN/MAX/AVG are not usage that adds up.
METERED_AGGREGATIONS = ("SUM", "COUNT", "UNIQUE_COUNT", "LATEST")


class FeatureStore(Protocol):
    def put_feature(self, namespace: str, doc: dict[str, Any], *, created_at: datetime,
                    archived_at: datetime | None = None, check: Callable[[], None] | None = None) -> None: ...

    def get_feature(self, namespace: str, id_or_key: str, include_archived: bool = False) -> dict[str, Any] | None: ...

    def list_features(self, namespace: str, include_archived: bool = False,
                      meter_slugs: list[str] | None = None) -> list[dict[str, Any]]: ...


bad = ValidationFailed.at
# OpenMeter's FeatureCreateInputs: none of these nullable.
NOT_NULL = ("metadata", "meterSlug", "meterGroupByFilters", "advancedMeterGroupByFilters", "unitCost")


def valid_key(value: Any, field: str) -> str:
    if not isinstance(value, str) or not KEY_RE.match(value) or len(value) > 64:
        raise bad(field, "required, 1 to 64 characters of a-z, 0-9 and single underscores between them")
    return value


def create_feature(namespace: str, body: Any, *, store: FeatureStore, meta: MetaStore, now: datetime) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("", "feature must be a JSON object")
    key = valid_key(body.get("key"), "key")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 256:
        raise bad("name", "required, 1 to 256 characters")
    doc: dict[str, Any] = {"id": new_id(), "key": key, "name": name}
    fields.not_null(body, NOT_NULL)
    if body.get("metadata") is not None:
        if not isinstance(body["metadata"], dict) or not all(isinstance(v, str) for v in body["metadata"].values()):
            raise bad("metadata", "must be an object of strings")
        doc["metadata"] = body["metadata"]
    slug = body.get("meterSlug")
    group_by: dict[str, str] | None = None
    if slug is not None:
        group_by = _meter_fields(namespace, slug, body, doc, meta)
    elif body.get("meterGroupByFilters") or body.get("advancedMeterGroupByFilters"):
        raise bad("meterSlug", "group-by filters need a meter")
    if body.get("unitCost") is not None:
        doc["unitCost"] = unit_cost(body["unitCost"], group_by)
    stamp = format_rfc3339(now)
    doc.update(createdAt=stamp, updatedAt=stamp)

    def meter_still_there() -> None:
        # Under the lock the meter's deletion takes too (its check, nothing uses the meter, would miss this feature).
        if slug is not None and meta.get_meter(namespace, slug) is None:
            raise bad("meterSlug", f"no meter {slug!r}")

    store.put_feature(namespace, doc, created_at=now, check=meter_still_there if slug is not None else None)
    return doc


def _meter_fields(namespace: str, slug: Any, body: dict[str, Any], doc: dict[str, Any],
                  meta: MetaStore) -> dict[str, str]:
    """A metered feature's `meterSlug` (a meter that can be burned down) and its group-by filters, into `doc`; the
    meter's groupBy keys."""
    valid_key(slug, "meterSlug")
    meter = meta.get_meter(namespace, slug)
    if meter is None:
        raise bad("meterSlug", f"no meter {slug!r}")
    if meter.aggregation not in METERED_AGGREGATIONS:
        raise bad("meterSlug", f"a {meter.aggregation} meter cannot be burned down; use one of "
                               + ", ".join(METERED_AGGREGATIONS))
    doc["meterSlug"] = slug
    simple = body.get("meterGroupByFilters")
    if simple is not None:
        if not isinstance(simple, dict) or not all(isinstance(v, str) for v in simple.values()):
            raise bad("meterGroupByFilters", "must be an object of groupBy key -> value")
        _known_keys(simple, meter.group_by, "meterGroupByFilters")
        doc["meterGroupByFilters"] = simple
        if body.get("advancedMeterGroupByFilters") is None:
            # OpenMeter: the deprecated map is equality filters, shown in the advanced form as well
            doc["advancedMeterGroupByFilters"] = {k: {"$eq": v} for k, v in simple.items()}
    advanced = body.get("advancedMeterGroupByFilters")
    if advanced is not None:
        parse_filters(advanced)
        _known_keys(advanced, meter.group_by, "advancedMeterGroupByFilters")
        doc["advancedMeterGroupByFilters"] = advanced
    return meter.group_by


# OpenMeter's LLM token types (request and response are its aliases of input and output), each mapped to the price
# Billow's LLM costs price it at (llm.OPENMETER_TOKEN_TYPES).
LLM_TOKEN_TYPES = tuple(OPENMETER_TOKEN_TYPES)
# A static provider or model is looked up among the LLM prices, whose names are bounded (domain/llm.parse_override:
# provider 128, model 256 characters): a longer one could never be priced, so it is refused, not stored.
LLM_NAME_MAX = {"provider": PROVIDER_MAX, "model": MODEL_MAX}


def unit_cost(raw: Any, group_by: dict[str, str] | None) -> dict[str, Any]:
    """A feature's `unitCost` as OpenMeter validates it (productcatalog/feature.UnitCost): `manual` with a
    non-negative `amount` (a Numeric string, kept exact), or `llm` naming each of provider, model and token type
    either as a static value or as a groupBy key of the feature's meter (exactly one of each pair; an LLM unit cost
    needs a meter). Returned in the API's shape, as stored and shown."""
    if not isinstance(raw, dict):
        raise bad("unitCost", 'must be an object: {"type": "manual", "amount": "0.01"} or {"type": "llm", ...}')
    kind = raw.get("type")
    if kind == "manual":
        if raw.get("amount") is None:
            raise bad("unitCost.amount", "required for a manual unit cost")
        if not isinstance(raw["amount"], str):  # OpenMeter's Numeric is a JSON string (its validator refuses 0.01)
            raise bad("unitCost.amount", 'must be a decimal string such as "0.01" (OpenMeter\'s Numeric), not a '
                                         "JSON number")
        try:
            amount = parse_decimal(raw["amount"], int_digits=20, scale=18)
        except ValueError as exc:
            raise bad("unitCost.amount", str(exc)) from None
        if amount < 0:
            raise bad("unitCost.amount", "must be non-negative")
        return {"type": "manual", "amount": plain(amount)}
    if kind != "llm":
        raise bad("unitCost.type", "must be 'manual' or 'llm'")
    if group_by is None:
        raise bad("unitCost", "an LLM unit cost needs a meter: set meterSlug")
    # OpenMeter's FeatureLLMUnitCost makes none of these nullable: a null is never the field left out
    fields.not_null(raw, ("provider", "providerProperty", "model", "modelProperty", "tokenType", "tokenTypeProperty"),
                    "unitCost.")
    out: dict[str, Any] = {"type": "llm"}
    for static, prop in (("provider", "providerProperty"), ("model", "modelProperty"),
                         ("tokenType", "tokenTypeProperty")):
        for name in (static, prop):
            if raw.get(name) is not None and not isinstance(raw[name], str):
                raise bad(f"unitCost.{name}", "must be a string")
        if static in LLM_NAME_MAX and len(raw.get(static) or "") > LLM_NAME_MAX[static]:
            raise bad(f"unitCost.{static}", f"at most {LLM_NAME_MAX[static]} characters (no LLM price names a longer "
                                            f"{static})")
        value, key = raw.get(static) or "", raw.get(prop) or ""
        if not value and not key:
            raise bad(f"unitCost.{static}", f"either {static} or {prop} is required for an LLM unit cost")
        if value and key:
            raise bad(f"unitCost.{prop}", f"{prop} and {static} are mutually exclusive")
        if key and key not in group_by:
            raise bad(f"unitCost.{prop}", f"{key!r} is not a groupBy key of the meter "
                                          f"({', '.join(sorted(group_by)) or 'none'})")
        if static == "tokenType" and value and value not in LLM_TOKEN_TYPES:
            raise bad("unitCost.tokenType", "must be one of " + ", ".join(LLM_TOKEN_TYPES))
        out[static if value else prop] = value or key
    return out


def _known_keys(filters: dict[str, Any], group_by: dict[str, str], field: str) -> None:
    for k in filters:
        if k not in group_by:
            raise bad(f"{field}.{k}", f"not a groupBy key of the meter ({', '.join(sorted(group_by)) or 'none'})")


def get_feature(namespace: str, id_or_key: str, *, store: FeatureStore, include_archived: bool = True) -> dict[str, Any]:
    doc = store.get_feature(namespace, id_or_key, include_archived=include_archived)
    if doc is None:
        raise NotFound(f"feature {id_or_key!r} not found")
    return doc


def archive_feature(namespace: str, feature_id: str, *, store: FeatureStore, now: datetime) -> None:
    doc = get_feature(namespace, feature_id, store=store, include_archived=False)
    stamp = format_rfc3339(now)
    doc.update(archivedAt=stamp, updatedAt=stamp)
    store.put_feature(namespace, doc, created_at=now, archived_at=now)


def list_features(namespace: str, qs: dict[str, list[str]], *, store: FeatureStore) -> Any:
    include = params.flag(qs, "includeArchived")
    items = store.list_features(namespace, include_archived=include, meter_slugs=qs.get("meterSlug"))
    return pages.array_or_page(items, qs, pages.FEATURES)
