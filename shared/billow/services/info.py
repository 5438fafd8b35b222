"""OpenMeter's small read operations (issue 16):

- `GET /api/v1/customers/{c}/access` (getCustomerAccess): each feature the customer has an entitlement to now, with
  its value (what `/customers/{c}/entitlements/{feature}/value` answers);
- `GET /api/v1/meters/{m}/group-by/{key}/values` (listMeterGroupByValues): the values a meter's group-by key took
  in [from, to] (from defaults to 24 hours ago, both inclusive), sorted;
- `GET /api/v1/debug/metrics` (getDebugMetrics): OpenMetrics text of the events per subject whose time is since
  midnight UTC, as OpenMeter's debug connector counts them (`openmeter_events_total{subject=...}`);
- `GET /api/v1/info/currencies` is billow.domain.currencies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from billow.domain.usage import UsageQuery
from billow.errors import NotFound, ValidationFailed
from billow.ports import MetaStore, UsageStore
from billow.services import balances, entitlements, params
from billow.services.entitlements import EntitlementStore
from billow.timeutil import parse_rfc3339

bad = ValidationFailed.at


def customer_access(namespace: str, customer_ref: str, *, store: EntitlementStore, meta: MetaStore, usage: UsageStore,
                    now: datetime, cache: balances.BalanceCache | None = None) -> dict[str, Any]:
    keys = entitlements.customer_subject_keys(namespace, customer_ref, meta)
    party = entitlements.party_subject_keys(namespace, keys, meta) if keys else []
    out: dict[str, Any] = {}
    for doc in store.list_entitlements(namespace, party) if party else []:
        begin, end = doc.get("activeFrom"), doc.get("activeTo")
        if (begin and parse_rfc3339(begin, "activeFrom") > now) or (end and parse_rfc3339(end, "activeTo") <= now):
            continue  # not in force now
        out[doc["featureKey"]] = balances.value(namespace, keys, doc["featureKey"], None, store=store, meta=meta,
                                                usage=usage, now=now, cache=cache)
    return {"entitlements": dict(sorted(out.items()))}


def group_by_values(namespace: str, meter_ref: str, key: str, qs: dict[str, list[str]], *, meta: MetaStore,
                    usage: UsageStore, now: datetime) -> list[str]:
    meter = meta.get_meter(namespace, meter_ref)
    if meter is None:
        raise NotFound(f"meter {meter_ref!r} not found")
    if key not in meter.group_by:
        raise bad("groupByKey", f"meter {meter.slug!r} has no group-by key {key[:64]!r}; its keys: "
                                f"{', '.join(sorted(meter.group_by)) or 'none'}")
    raw_from, raw_to = params.one(qs, "from"), params.one(qs, "to")
    start = parse_rfc3339(raw_from, "from") if raw_from is not None else now - timedelta(hours=24)
    end = parse_rfc3339(raw_to, "to") if raw_to is not None else None
    if end is not None and end < start:
        raise bad("to", "must not be before from")
    rows = usage.aggregate(UsageQuery(
        namespace=namespace, meter_id=meter.id, aggregation=meter.aggregation, start=start, end=end, window_size=None,
        window_tz="UTC", subjects=None, group_by=[key], by_subject=False, subject_customers=None))
    return sorted({v for r in rows if (v := r.groups.get(key)) not in (None, "")})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def debug_metrics(namespace: str, *, usage: UsageStore, now: datetime) -> str:
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = usage.count_events(namespace, midnight)
    lines = ["# HELP openmeter_events Number of ingested events", "# TYPE openmeter_events counter",
             "# UNIT openmeter_events events"]
    lines += [f'openmeter_events_total{{subject="{_label(subject)}"}} {n}.0' for subject, n in sorted(counts.items())]
    return "\n".join([*lines, "# EOF"]) + "\n"
