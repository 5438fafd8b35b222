"""REST routes for features, entitlements and grants (OpenMeter v1 paths). Each parses, calls one use-case,
maps the result; the API handler includes this router."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import container
from billow.services import balances, entitlements, features, llm_costs, pages, params
from billow.timeutil import parse_rfc3339
from billow.web.http import path_param, query_multi
from functions.api.bodies import optional_request_body, request_body
from functions.api.entitlement_requests import new_entitlement
from functions.api.responses import no_content, ok

router = APIGatewayHttpRouter()


def _event() -> dict[str, Any]:
    return router.current_event.raw_event


# -- features ---------------------------------------------------------------------------------------
def _priced(answer: Any) -> Any:
    """Features with OpenMeter's readOnly unitCost.pricing where it is known (llm_costs.with_pricing)."""
    c = container()
    return llm_costs.with_pricing(c.namespace, answer, store=c.llm_price_store(), now=c.clock.now())


@router.get("/api/v1/features")
def list_features() -> Response:
    c = container()
    return ok(_priced(features.list_features(c.namespace, query_multi(_event()), store=c.entitlements)))


@router.post("/api/v1/features")
def create_feature() -> Response:
    c = container()
    return ok(_priced(features.create_feature(c.namespace, request_body(router), store=c.entitlements, meta=c.meta,
                                              now=c.clock.now())), 201)


@router.get("/api/v1/features/<feature>")
def get_feature(feature: str) -> Response:
    c = container()
    return ok(_priced(features.get_feature(c.namespace, path_param(feature), store=c.entitlements)))


@router.delete("/api/v1/features/<feature>")
def archive_feature(feature: str) -> Response:
    c = container()
    features.archive_feature(c.namespace, path_param(feature), store=c.entitlements, now=c.clock.now())
    return no_content()


# -- entitlements -----------------------------------------------------------------------------------
def _present(doc: dict[str, Any]) -> dict[str, Any]:
    c = container()
    return balances.entitlement_json(c.namespace, doc, store=c.entitlements, now=c.clock.now())


@router.get("/api/v1/entitlements")
def list_all_entitlements() -> Response:
    c = container()
    qs = query_multi(_event())
    kinds = params.choices(qs, "entitlementType", ("metered", "boolean", "static"))
    docs = c.entitlements.list_entitlements(
        c.namespace, subject_keys=qs.get("subject") or None, feature_keys=qs.get("feature") or None,
        include_deleted=params.flag(qs, "includeDeleted"))
    return ok(pages.array_or_page([_present(d) for d in docs if not kinds or d["type"] in kinds], qs,
                                  pages.ENTITLEMENTS))


@router.get("/api/v1/entitlements/<entitlement>")
def get_any_entitlement(entitlement: str) -> Response:
    c = container()
    return ok(_present(entitlements.get_entitlement(c.namespace, path_param(entitlement), store=c.entitlements,
                                                    include_deleted=True)))


@router.post("/api/v1/subjects/<subject>/entitlements")
def create_entitlement(subject: str) -> Response:
    c = container()
    now, body, reserved = new_entitlement(c, router)
    doc = entitlements.create_entitlement(c.namespace, path_param(subject), body, store=c.entitlements, meta=c.meta,
                                          now=now, reserved=reserved)
    return ok(_present(doc), 201)


@router.get("/api/v1/subjects/<subject>/entitlements")
def list_subject_entitlements(subject: str) -> Response:
    c = container()
    keys = entitlements.party_keys(c.namespace, path_param(subject), c.meta)  # every subject of its customer
    include = params.flag(query_multi(_event()), "includeDeleted")
    return ok([_present(d) for d in c.entitlements.list_entitlements(c.namespace, keys, include_deleted=include)])


@router.get("/api/v1/subjects/<subject>/entitlements/<entitlement>")
def get_subject_entitlement(subject: str, entitlement: str) -> Response:
    c = container()
    keys = entitlements.party_keys(c.namespace, path_param(subject), c.meta)
    return ok(_present(entitlements.get_entitlement(c.namespace, path_param(entitlement), store=c.entitlements,
                                                    subject_keys=keys, include_deleted=True)))


@router.delete("/api/v1/subjects/<subject>/entitlements/<entitlement>")
def delete_entitlement(subject: str, entitlement: str) -> Response:
    c = container()
    entitlements.delete_entitlement(c.namespace, path_param(subject), path_param(entitlement), store=c.entitlements,
                                    meta=c.meta, now=c.clock.now())
    return no_content()


@router.put("/api/v1/subjects/<subject>/entitlements/<entitlement>/override")
def override_entitlement(subject: str, entitlement: str) -> Response:
    c = container()
    now, body, reserved = new_entitlement(c, router)
    doc = entitlements.override_entitlement(c.namespace, path_param(subject), path_param(entitlement), body,
                                            store=c.entitlements, meta=c.meta, now=now, reserved=reserved)
    return ok(_present(doc), 201)


@router.get("/api/v1/subjects/<subject>/entitlements/<entitlement>/value")
def entitlement_value(subject: str, entitlement: str) -> Response:
    c = container()
    cache = c.balance_cache
    key = (cache.subject_key if cache is not None else entitlements.subject_key)(c.namespace, path_param(subject), c.meta)
    return ok(balances.value(c.namespace, [key], path_param(entitlement), _at(), store=c.entitlements, meta=c.meta,
                             usage=c.usage, now=c.clock.now(), cache=c.balance_cache))


@router.get("/api/v1/customers/<customer>/entitlements/<feature>/value")
def customer_entitlement_value(customer: str, feature: str) -> Response:
    c = container()
    keys = entitlements.customer_subject_keys(c.namespace, path_param(customer), c.meta)
    return ok(balances.value(c.namespace, keys, path_param(feature), _at(), store=c.entitlements, meta=c.meta,
                             usage=c.usage, now=c.clock.now(), cache=c.balance_cache))


def _at() -> Any:
    raw = params.one(query_multi(_event()), "time")
    return parse_rfc3339(raw, "time") if raw is not None else None


@router.get("/api/v1/subjects/<subject>/entitlements/<entitlement>/history")
def entitlement_history(subject: str, entitlement: str) -> Response:
    c = container()
    key = entitlements.subject_key(c.namespace, path_param(subject), c.meta)
    return ok(balances.history(c.namespace, [key], path_param(entitlement), query_multi(_event()),
                               store=c.entitlements, meta=c.meta, usage=c.usage, now=c.clock.now()))


@router.post("/api/v1/subjects/<subject>/entitlements/<entitlement>/reset")
def reset_entitlement(subject: str, entitlement: str) -> Response:
    c = container()
    entitlements.reset(c.namespace, path_param(subject), path_param(entitlement), optional_request_body(router),
                       store=c.entitlements, meta=c.meta, now=c.clock.now())
    return no_content()


# -- grants -----------------------------------------------------------------------------------------
@router.post("/api/v1/subjects/<subject>/entitlements/<entitlement>/grants")
def create_grant(subject: str, entitlement: str) -> Response:
    c = container()
    return ok(entitlements.create_grant(c.namespace, path_param(subject), path_param(entitlement), request_body(router),
                                        store=c.entitlements, meta=c.meta, now=c.clock.now()), 201)


@router.get("/api/v1/subjects/<subject>/entitlements/<entitlement>/grants")
def list_entitlement_grants(subject: str, entitlement: str) -> Response:
    c = container()
    qs = query_multi(_event())
    include = params.flag(qs, "includeDeleted")
    return ok(pages.ordered(entitlements.list_grants(c.namespace, path_param(subject), path_param(entitlement),
                                                     store=c.entitlements, meta=c.meta, now=c.clock.now(),
                                                     include_deleted=include), qs, pages.SUBJECT_GRANTS))


@router.get("/api/v1/grants")
def list_all_grants() -> Response:
    c = container()
    qs = query_multi(_event())
    items = entitlements.list_grants(c.namespace, None, None, store=c.entitlements, meta=c.meta, now=c.clock.now(),
                                     include_deleted=params.flag(qs, "includeDeleted"))
    return ok(pages.array_or_page(items, qs, pages.GRANTS))


@router.delete("/api/v1/grants/<grant>")
def void_grant(grant: str) -> Response:
    c = container()
    raw = params.one(query_multi(_event()), "at")
    entitlements.void_grant(c.namespace, path_param(grant), store=c.entitlements, now=c.clock.now(),
                            at=parse_rfc3339(raw, "at") if raw is not None else None)
    return no_content()
