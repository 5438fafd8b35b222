"""Product catalog: plans (versions, phases), add-ons and their rate cards, in OpenMeter's v1 JSON shapes.

Pure validation and normalisation: a plan or add-on body becomes the document Billow stores and serves, with
every price parsed by `billow.domain.pricing` (so a bad tier, a negative amount or an unknown currency is
refused here, naming its field, e.g. `phases[1].rateCards[0].price.tiers[2].upToAmount`). Feature look-ups
(does a rate card's feature exist, does it have a meter) are the caller's: `publish_problems` takes them as a
mapping. No I/O, no clock.

Rules (OpenMeter's, from its productcatalog validators):
- keys are `^[a-z0-9]+(?:_[a-z0-9]+)*$` (at most 64); a rate card with a feature has the feature's key as its key;
- rate card keys are unique within a phase, phase keys within a plan;
- every phase but the last has a `duration`; the last one runs until the subscription ends;
- billing cadences and durations are ISO 8601 durations of at least one hour;
- with `alignment.billablesMustAlign` (default true) every recurring rate card bills on the plan's cadence
  (checked at publish, `alignment_problems`: a misaligned plan may be kept as a draft, as OpenMeter allows);
- a flat-fee rate card has a flat price (or none: free); `billingCadence: null` makes it a one-time fee;
- a usage-based rate card needs a feature (its meter is what is rated) and a billing cadence;
- a metered entitlement template needs a feature with a meter (checked at publish).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from billow.domain import pricing
from billow.domain.entitlements import amount as entitlement_amount
from billow.domain.money import Currency
from billow.domain.periods import RecurringPeriod
from billow.errors import ValidationFailed
from billow.ids import is_ulid
from billow.timeutil import parse_rfc3339

KEY_RE: Final = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
RATE_CARD_TYPES: Final = ("flat_fee", "usage_based")
ENTITLEMENT_TYPES: Final = ("metered", "static", "boolean")
SETTLEMENT_MODES: Final = ("credit_then_invoice", "credit_only")
TAX_BEHAVIORS: Final = ("inclusive", "exclusive")
INSTANCE_TYPES: Final = ("single", "multiple")
_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)  # any anchor: only the length of a duration is checked
_MIN_CADENCE: Final = timedelta(hours=1)

Problems = list[tuple[str, str]]


def failure(problems: Problems) -> ValidationFailed:
    errors = [{"field": f, "message": m} for f, m in problems]
    return ValidationFailed("; ".join(f"{f}: {m}" for f, m in problems), errors)


def _key(value: Any, field: str, problems: Problems) -> str | None:
    if not isinstance(value, str) or not KEY_RE.match(value) or len(value) > 64:
        problems.append((field, "must be 1 to 64 of a-z, 0-9 and single underscores between them"))
        return None
    return value


def _text(body: Mapping[str, Any], key: str, field: str, problems: Problems, *, required: bool,
          max_len: int = 256) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            problems.append((field, "is required"))
        return None
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > max_len:
        problems.append((field, f"must be a string of 1 to {max_len} characters"))
        return None
    return value


def _metadata(value: Any, field: str, problems: Problems) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        problems.append((field, "must be an object of string values"))
        return None
    return dict(value)


def duration(value: Any, field: str, problems: Problems, *, minimum: timedelta = _MIN_CADENCE) -> str | None:
    """An ISO 8601 duration (P1M, P1W, PT1H, ...) of at least `minimum`; the text is kept as given."""
    if not isinstance(value, str):
        problems.append((field, "must be an ISO 8601 duration such as P1M"))
        return None
    try:
        period = RecurringPeriod(value, _EPOCH)
    except ValidationFailed as exc:
        problems.append((field, exc.errors[0]["message"] if exc.errors else str(exc)))
        return None
    try:
        length = period.at(1) - period.at(0)
    except OverflowError:
        problems.append((field, "is too long"))
        return None
    if length < minimum:
        problems.append((field, f"must be at least {int(minimum.total_seconds() // 3600)} hour"))
        return None
    return value


def _nested(problems: Problems, field: str, exc: ValidationFailed) -> None:
    for e in exc.errors or [{"field": "", "message": exc.detail}]:
        sub = e.get("field") or ""
        problems.append((f"{field}.{sub}" if sub and not sub.startswith(field) else (sub or field), e["message"]))


def _entitlement_template(value: Any, field: str, problems: Problems, feature_key: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append((field, "must be an object"))
        return None
    kind = value.get("type")
    if kind not in ENTITLEMENT_TYPES:
        problems.append((f"{field}.type", f"must be one of {', '.join(ENTITLEMENT_TYPES)}"))
        return None
    if feature_key is None:
        problems.append((f"{field}", "an entitlement template needs the rate card's featureKey"))
    out: dict[str, Any] = {"type": kind}
    if value.get("metadata") is not None:
        out["metadata"] = _metadata(value.get("metadata"), f"{field}.metadata", problems)
    if kind == "static":
        config = value.get("config")
        if not isinstance(config, str):
            problems.append((f"{field}.config", "must be a JSON-encoded string"))
        out["config"] = config
    elif kind == "metered":
        for flag in ("isSoftLimit", "preserveOverageAtReset"):
            if value.get(flag) is not None:
                if not isinstance(value[flag], bool):
                    problems.append((f"{field}.{flag}", "must be a boolean"))
                out[flag] = value[flag]
        if value.get("issueAfterReset") is not None:
            issue = value["issueAfterReset"]
            if isinstance(issue, bool) or not isinstance(issue, int | Decimal) or not issue >= 0:
                problems.append((f"{field}.issueAfterReset", "must be a number of at least 0"))
            else:  # the grant it issues is checked as an entitlement's issueAfterReset is (1e999999 is none)
                try:
                    entitlement_amount(issue, f"{field}.issueAfterReset")
                except ValidationFailed as exc:
                    _nested(problems, f"{field}.issueAfterReset", exc)
            out["issueAfterReset"] = issue
        if value.get("issueAfterResetPriority") is not None:
            prio = value["issueAfterResetPriority"]
            if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 255:
                problems.append((f"{field}.issueAfterResetPriority", "must be an integer between 1 and 255"))
            out["issueAfterResetPriority"] = prio
        if value.get("usagePeriod") is not None:
            out["usagePeriod"] = duration(value["usagePeriod"], f"{field}.usagePeriod", problems)
    return out


TAX_SETTINGS: Final = ("behavior", "stripe", "customInvoicing", "taxCodeId")
STRIPE_TAX_CODE: Final = re.compile(r"txcd_[0-9]{8}")


def _tax_config(value: Any, field: str, problems: Problems) -> dict[str, Any] | None:
    """OpenMeter's TaxConfig, rebuilt from the settings it has (each checked; none nullable): `behavior` inclusive or
    exclusive, `stripe` {code: txcd_ and 8 digits}, `customInvoicing` {code: a string}, `taxCodeId` a tax code's id
    (a ULID). What is stored and shown is what was checked: a field inside `stripe` or `customInvoicing` that
    OpenMeter's does not have is dropped (it was stored and shown back as sent, whatever it held)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append((field, "must be an object"))
        return None
    unknown = set(value) - set(TAX_SETTINGS)
    if unknown:
        problems.append((f"{field}.{sorted(unknown)[0]}", "unknown tax setting"))
    out: dict[str, Any] = {}
    for name in TAX_SETTINGS:
        if name in value and value[name] is None:
            problems.append((f"{field}.{name}", "must not be null (leave it out)"))
    behavior = value.get("behavior")
    if behavior is not None:
        if isinstance(behavior, str) and behavior in TAX_BEHAVIORS:
            out["behavior"] = behavior
        else:
            problems.append((f"{field}.behavior", "must be inclusive or exclusive"))
    stripe = value.get("stripe")
    if stripe is not None:
        code = stripe.get("code") if isinstance(stripe, dict) else None
        if isinstance(code, str) and STRIPE_TAX_CODE.fullmatch(code):
            out["stripe"] = {"code": code}
        else:
            problems.append((f"{field}.stripe.code", "must be a Stripe product tax code such as txcd_10000000"))
    custom = value.get("customInvoicing")
    if custom is not None:
        code = custom.get("code") if isinstance(custom, dict) else None
        if isinstance(code, str):
            out["customInvoicing"] = {"code": code}
        else:
            problems.append((f"{field}.customInvoicing.code", "must be a string"))
    tax_code = value.get("taxCodeId")
    if tax_code is not None:
        if isinstance(tax_code, str) and is_ulid(tax_code):
            out["taxCodeId"] = tax_code
        else:
            problems.append((f"{field}.taxCodeId", "must be a tax code's id (a ULID)"))
    return out


def parse_tax_config(value: Any, field: str) -> dict[str, Any] | None:
    """OpenMeter's TaxConfig as a rate card takes it (null: none), each bad setting named under `field`."""
    problems: Problems = []
    out = _tax_config(value, field, problems)
    if problems:
        raise failure(problems)
    return out


def parse_rate_card(body: Any, field: str, problems: Problems) -> dict[str, Any]:
    """One rate card → its normalised document (prices re-serialised exactly). Problems are appended."""
    if not isinstance(body, dict):
        problems.append((field, "must be an object"))
        return {}
    kind = body.get("type")
    if kind not in RATE_CARD_TYPES:
        problems.append((f"{field}.type", "must be flat_fee or usage_based"))
        return {}
    key = _key(body.get("key"), f"{field}.key", problems)
    feature_key = body.get("featureKey")
    if feature_key is not None:
        feature_key = _key(feature_key, f"{field}.featureKey", problems)
        if key is not None and feature_key is not None and feature_key != key:
            problems.append((f"{field}.key", f"must equal featureKey ({feature_key!r}) when a feature is set"))
    out: dict[str, Any] = {"type": kind, "key": key, "name": _text(body, "name", f"{field}.name", problems, required=True)}
    if body.get("description") is not None:
        out["description"] = _text(body, "description", f"{field}.description", problems, required=False, max_len=1024)
    if body.get("metadata") is not None:
        out["metadata"] = _metadata(body["metadata"], f"{field}.metadata", problems)
    out["featureKey"] = feature_key
    bc = body.get("billingCadence")
    if bc is None:
        if kind == "usage_based":
            problems.append((f"{field}.billingCadence", "is required for a usage-based rate card"))
        out["billingCadence"] = None  # flat fee: one-time
    else:
        out["billingCadence"] = duration(bc, f"{field}.billingCadence", problems)
    if kind == "usage_based" and feature_key is None:
        problems.append((f"{field}.featureKey", "is required for a usage-based rate card (its meter is what is rated)"))
    price_doc = body.get("price")
    out["price"] = None
    if price_doc is not None:
        try:
            price = pricing.parse_price(price_doc, field=f"{field}.price")
        except ValidationFailed as exc:
            _nested(problems, f"{field}.price", exc)
        else:
            if kind == "flat_fee" and not isinstance(price, pricing.FlatPrice):
                problems.append((f"{field}.price.type", "a flat_fee rate card takes a flat price"))
            if kind == "usage_based" and isinstance(price, pricing.FlatPrice) and out["billingCadence"] is None:
                problems.append((f"{field}.billingCadence", "is required"))
            out["price"] = pricing.price_to_json(price)
    elif "price" not in body:
        problems.append((f"{field}.price", "is required (null for a free rate card)"))
    if body.get("discounts") is not None:
        try:
            discounts = pricing.parse_discounts(body["discounts"], field=f"{field}.discounts")
        except ValidationFailed as exc:
            _nested(problems, f"{field}.discounts", exc)
        else:
            if discounts.usage_quantity is not None and kind == "flat_fee":
                problems.append((f"{field}.discounts.usage", "usage discounts apply to usage-based rate cards only"))
            out["discounts"] = pricing.discounts_to_json(discounts)
    out["entitlementTemplate"] = _entitlement_template(body.get("entitlementTemplate"), f"{field}.entitlementTemplate",
                                                       problems, feature_key)
    out["taxConfig"] = _tax_config(body.get("taxConfig"), f"{field}.taxConfig", problems)
    return out


def _rate_cards(value: Any, field: str, problems: Problems) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        problems.append((field, "must be a list of rate cards"))
        return []
    cards = [parse_rate_card(rc, f"{field}[{i}]", problems) for i, rc in enumerate(value)]
    seen: set[str] = set()
    for i, rc in enumerate(cards):
        if rc.get("key") in seen:
            problems.append((f"{field}[{i}].key", f"duplicate rate card key {rc['key']!r}"))
        if rc.get("key"):
            seen.add(rc["key"])
    return cards


def _common(body: Any, what: str, problems: Problems) -> dict[str, Any]:
    """What plans and add-ons share: key, name, description, metadata, currency (USD by default)."""
    if not isinstance(body, dict):
        raise failure([("body", f"must be {what} object")])
    out: dict[str, Any] = {
        "key": _key(body.get("key"), "key", problems),
        "name": _text(body, "name", "name", problems, required=True),
        "description": _text(body, "description", "description", problems, required=False, max_len=1024),
        "metadata": _metadata(body.get("metadata"), "metadata", problems),
    }
    try:
        out["currency"] = Currency.of(body.get("currency", "USD")).code
    except ValidationFailed as exc:
        _nested(problems, "currency", exc)
    return out


def parse_plan(body: Any) -> dict[str, Any]:
    """A PlanCreate / PlanReplaceUpdate body → the plan's editable fields, normalised; all problems at once."""
    problems: Problems = []
    out = _common(body, "a plan", problems)
    cadence = duration(body.get("billingCadence"), "billingCadence", problems)
    out["billingCadence"] = cadence
    # alignment and proRatingConfig: objects (left out or null: the defaults). Any other value was read as left out
    # (alignment 1e999999, 7 or "x"; proRatingConfig false, 0, "" or []) and the plan made with the defaults.
    alignment = {} if body.get("alignment") is None else body["alignment"]
    if not isinstance(alignment, dict):
        problems.append(("alignment", "must be an object: {billablesMustAlign: boolean}"))
        alignment = {}
    must_align = alignment.get("billablesMustAlign", True)
    if not isinstance(must_align, bool):
        problems.append(("alignment.billablesMustAlign", "must be a boolean"))
        must_align = True
    out["alignment"] = {"billablesMustAlign": must_align}
    pro = body.get("proRatingConfig")
    pro = {"enabled": True, "mode": "prorate_prices"} if pro is None else pro
    if not isinstance(pro, dict) or not isinstance(pro.get("enabled"), bool) or pro.get("mode", "prorate_prices") != "prorate_prices":
        problems.append(("proRatingConfig", "must be {enabled: boolean, mode: prorate_prices}"))
    else:
        out["proRatingConfig"] = {"enabled": pro["enabled"], "mode": "prorate_prices"}
    settlement = body.get("settlementMode", "credit_then_invoice")
    if settlement not in SETTLEMENT_MODES:
        problems.append(("settlementMode", f"must be one of {', '.join(SETTLEMENT_MODES)}"))
    out["settlementMode"] = settlement
    phases = body.get("phases")
    out["phases"] = []
    if not isinstance(phases, list) or not phases:
        problems.append(("phases", "must be a non-empty list of phases"))
    else:
        keys: set[str] = set()
        for i, ph in enumerate(phases):
            f = f"phases[{i}]"
            if not isinstance(ph, dict):
                problems.append((f, "must be an object"))
                continue
            pkey = _key(ph.get("key"), f"{f}.key", problems)
            if pkey is not None and pkey in keys:
                problems.append((f"{f}.key", f"duplicate phase key {pkey!r}"))
            keys.add(pkey or "")
            last = i == len(phases) - 1
            dur = ph.get("duration")
            if last:
                if dur is not None:
                    problems.append((f"{f}.duration", "the last phase runs until the subscription ends: leave it null"))
            elif dur is None:
                problems.append((f"{f}.duration", "is required on every phase but the last"))
            else:
                dur = duration(dur, f"{f}.duration", problems)
            out["phases"].append({
                "key": pkey, "name": _text(ph, "name", f"{f}.name", problems, required=True),
                "description": _text(ph, "description", f"{f}.description", problems, required=False, max_len=1024),
                "metadata": _metadata(ph.get("metadata"), f"{f}.metadata", problems),
                "duration": None if last else dur,
                "rateCards": _rate_cards(ph.get("rateCards"), f"{f}.rateCards", problems),
            })
    if problems:
        raise failure(problems)
    return out


def parse_addon(body: Any) -> dict[str, Any]:
    """An AddonCreate / AddonReplaceUpdate body → the add-on's editable fields."""
    problems: Problems = []
    out = _common(body, "an add-on", problems)
    instance = body.get("instanceType")
    if instance not in INSTANCE_TYPES:
        problems.append(("instanceType", "must be single or multiple"))
    out["instanceType"] = instance
    out["rateCards"] = _rate_cards(body.get("rateCards"), "rateCards", problems)
    if problems:
        raise failure(problems)
    return out


def publish_problems(rate_cards: list[tuple[str, dict[str, Any]]], features: Mapping[str, dict[str, Any] | None]) -> Problems:
    """What stops publishing: rate cards whose feature is unknown (or archived), usage-based or metered ones
    whose feature has no meter. `rate_cards` pairs each card with its field path; `features` maps keys to the
    live feature (None: not found)."""
    problems: Problems = []
    for field, rc in rate_cards:
        fk = rc.get("featureKey")
        if fk is None:
            continue
        feature = features.get(fk)
        if feature is None:
            problems.append((f"{field}.featureKey", f"unknown or archived feature {fk!r}"))
            continue
        metered = (rc.get("entitlementTemplate") or {}).get("type") == "metered"
        if (rc["type"] == "usage_based" or metered) and not feature.get("meterSlug"):
            problems.append((f"{field}.featureKey", f"feature {fk!r} has no meter, so it cannot be "
                                                    f"{'rated by usage' if rc['type'] == 'usage_based' else 'metered'}"))
    return problems


def alignment_problems(plan: dict[str, Any]) -> Problems:
    """With `alignment.billablesMustAlign` (default true), each recurring rate card whose billing cadence is not
    the plan's: a draft may be misaligned, publishing (or subscribing to a custom plan) may not."""
    if not (plan.get("alignment") or {}).get("billablesMustAlign", True):
        return []
    cadence = plan.get("billingCadence")
    return [(f"{field}.billingCadence",
             f"must equal the plan's billingCadence ({cadence}) while alignment.billablesMustAlign is true")
            for field, rc in plan_rate_cards(plan) if rc.get("billingCadence") not in (None, cadence)]


def instance_price_problems(addon: dict[str, Any]) -> Problems:
    """A multiple-instance add-on's rate cards with a price other than flat: its quantity multiplies a flat amount,
    while a usage price is rated once whatever the quantity (OpenMeter's Addon.Publishable,
    ValidateAddonHasCompatiblePrices: ErrAddonInvalidPriceForMultiInstance)."""
    if addon.get("instanceType") != "multiple":
        return []
    return [(f"rateCards[{i}].price.type", f"a multiple-instance add-on takes flat prices only (or none), not "
                                           f"{rc['price']['type']!r}: its quantity multiplies a flat amount, a "
                                           "usage price would be rated once whatever the quantity")
            for i, rc in enumerate(addon["rateCards"]) if (rc.get("price") or {}).get("type", "flat") != "flat"]


def payment_term(price: dict[str, Any]) -> str:
    """A price document's payment term (a flat price's; in advance when it names none)."""
    return str(price.get("paymentTerm") or "in_advance")


def overlay_problems(plan: dict[str, Any], from_phase: str, addon: dict[str, Any]) -> Problems:
    """The add-on's rate cards that share a key with a rate card of the plan (in the phase it is offered from or a
    later one) but cannot be laid over it: both priced, unless both are flat fees of one payment term (their
    amounts add up); another feature or billing cadence; a percentage discount on both; entitlement templates of two
    types (OpenMeter's PlanAddon.Validate: ValidatePlanPhaseAndAddonRateCardsAreCompatible, RateCardWithOverlay)."""
    keys = [ph["key"] for ph in plan["phases"]]
    phases = plan["phases"][keys.index(from_phase):] if from_phase in keys else []
    out: Problems = []
    for i, arc in enumerate(addon["rateCards"]):
        for ph in phases:
            prc = next((rc for rc in ph["rateCards"] if rc["key"] == arc["key"]), None)
            if prc is None:
                continue
            why = []
            pp, ap = prc.get("price"), arc.get("price")
            if pp is not None and ap is not None:
                if pp["type"] != "flat" or ap["type"] != "flat":
                    why.append("both are priced and only flat prices add up")
                elif payment_term(pp) != payment_term(ap):
                    why.append(f"its payment term is {payment_term(ap)}, the plan's {payment_term(pp)}")
            if None not in (prc.get("featureKey"), arc.get("featureKey")) and prc["featureKey"] != arc["featureKey"]:
                why.append(f"its feature is {arc['featureKey']!r}, the plan's {prc['featureKey']!r}")
            if None not in (prc.get("billingCadence"), arc.get("billingCadence")) \
                    and prc["billingCadence"] != arc["billingCadence"]:
                why.append(f"its billing cadence is {arc['billingCadence']}, the plan's {prc['billingCadence']}")
            if ((prc.get("discounts") or {}).get("percentage") is not None
                    and (arc.get("discounts") or {}).get("percentage") is not None):
                why.append("both have a percentage discount")
            pt, at = (prc.get("entitlementTemplate") or {}).get("type"), (arc.get("entitlementTemplate") or {}).get("type")
            if None not in (pt, at) and (pt != at or pt == "static"):
                why.append(f"entitlement templates {at} and {pt} do not add up")
            elif pt == at == "metered" and prc["entitlementTemplate"].get("usagePeriod") \
                    != arc["entitlementTemplate"].get("usagePeriod"):
                why.append("their metered entitlements have different usage periods")
            if why:
                out.append((f"addon.rateCards[{i}]", f"rate card {arc['key']!r} shares its key with phase "
                                                     f"{ph['key']!r}'s and cannot be laid over it: {'; '.join(why)}"))
    return out


def plan_rate_cards(plan: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"phases[{i}].rateCards[{j}]", rc) for i, ph in enumerate(plan["phases"])
            for j, rc in enumerate(ph["rateCards"])]


def status(doc: dict[str, Any], now: datetime) -> str:
    """draft (never published) | scheduled (published for later) | active | archived (effectiveTo passed)."""
    frm, to = doc.get("effectiveFrom"), doc.get("effectiveTo")
    if frm is None:
        return "draft"
    if to is not None and parse_rfc3339(to, "effectiveTo") <= now:
        return "archived"
    if parse_rfc3339(frm, "effectiveFrom") > now:
        return "scheduled"
    return "active"
