"""REST API Lambda (API Gateway HTTP API, payload 2.0): meters, meter queries, events list, subjects,
customers, OpenAPI document; features, entitlements and grants come from `entitlement_routes`. Each route
parses, calls one use-case, maps the result."""

from __future__ import annotations

from functools import partial
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow import jsonx
from billow.bootstrap import Container, container
from billow.errors import BillowError, ValidationFailed, problem
from billow.services import (
    directory,
    entitlements,
    events_v2,
    health,
    meters,
    pages,
    params,
    query,
    subscriptions,
)
from billow.timeutil import parse_rfc3339
from billow.web import body_contract, present, query_contract
from billow.web.http import (
    JSON,
    PROBLEM,
    as_caller,
    body_text,
    path_param,
    query_multi,
    refuse_nul_in_path,
    wants_csv,
)
from billow.web.openapi import document
from functions.api import (
    admin_routes,
    app_routes,
    billing_routes,
    catalog_routes,
    docs_routes,
    entitlement_routes,
    home_routes,
    info_routes,
    lab_routes,
    llm_routes,
    notification_routes,
    portal_routes,
    receipt_routes,
    subscription_routes,
    v2_routes,
)
from functions.api.bodies import request_body
from functions.api.responses import no_content, ok
from functions.observability import API_GATEWAY, lambda_entry

logger = Logger(service="billow-api")
app = APIGatewayHttpResolver(serializer=jsonx.dumps)
app.include_router(entitlement_routes.router)
app.include_router(admin_routes.router)
app.include_router(catalog_routes.router)
app.include_router(billing_routes.router)
app.include_router(subscription_routes.router)
app.include_router(notification_routes.router)
app.include_router(portal_routes.router)
app.include_router(llm_routes.router)
app.include_router(lab_routes.router)
app.include_router(home_routes.router)
app.include_router(v2_routes.router)
app.include_router(info_routes.router)
app.include_router(app_routes.router)
app.include_router(docs_routes.router)
app.include_router(receipt_routes.router)


def _event() -> dict[str, Any]:
    return app.current_event.raw_event


def _contract(app: APIGatewayHttpResolver, next_middleware: Any) -> Response:
    """A path parameter holding NUL refused (billow.web.http.NUL_MESSAGE); list operations' query parameters checked
    against the served document first (billow.web.query_contract), and a JSON body against its fields' bounds there
    (billow.web.body_contract; a body that is no JSON is left to the route's own 400). The body is parsed here once:
    the route's `request_body` gives this parse's answer again (functions.api.bodies)."""
    event = app.current_event
    refuse_nul_in_path(event.path)
    query_contract.check(event.http_method, event.path, query_multi(event.raw_event))
    if event.http_method in ("POST", "PUT", "PATCH") and body_contract.body_schema(event.http_method, event.path) \
            and body_text(event.raw_event).strip():
        try:
            body = request_body(app)
        except BillowError:
            body = None
        if body is not None:
            body_contract.check(event.http_method, event.path, body)
    return next_middleware(app)


app.use(middlewares=[_contract])


@app.exception_handler(BillowError)
def _billow_error(exc: BillowError) -> Response:
    return Response(exc.status, PROBLEM, jsonx.dumps(problem(exc.status, exc.title, exc.detail, app.current_event.path, exc.extensions)))


@app.not_found
def _not_found(_: Exception) -> Response:
    path = app.current_event.path
    if allow := home_routes.allowed_methods(app, path):  # a known path, another method
        detail = f"{app.current_event.http_method} is not allowed on {path}; allowed: {', '.join(allow)}"
        return Response(405, PROBLEM, jsonx.dumps(problem(405, "Method Not Allowed", detail, path)),
                        headers={"Allow": ", ".join(allow)})
    return Response(404, PROBLEM, jsonx.dumps(problem(404, "Not Found", f"no route for {app.current_event.http_method} {path}", path)))


@app.exception_handler(OverflowError)
def _out_of_range(exc: OverflowError) -> Response:
    # Date arithmetic past year 9999 (a far-future instant plus a long period): the input is out of range.
    path = app.current_event.path
    return Response(400, PROBLEM, jsonx.dumps(problem(400, "Bad Request", "a date or duration in the request is out of "
                                                                         "the supported range", path)))


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    path = app.current_event.path
    return Response(500, PROBLEM, jsonx.dumps(problem(500, "Internal Server Error", "unexpected error; it was logged", path)))


# -- meters -------------------------------------------------------------------------------------------
@app.get("/api/v1/meters")
def list_meters() -> Response:
    c = container()
    qs = query_multi(_event())
    include_deleted = params.flag(qs, "includeDeleted")
    return ok(pages.ordered([present.meter_json(m) for m in c.meta.list_meters(c.namespace, include_deleted=include_deleted)],
                            qs, pages.METERS))


@app.post("/api/v1/meters")
def create_meter() -> Response:
    c = container()
    m = meters.create_meter(c.namespace, request_body(app), meta=c.meta, usage=c.usage, now=c.clock.now(), sink_lock=c.sink_lock)
    return ok(present.meter_json(m), 201)


@app.get("/api/v1/meters/<meter>")
def get_meter(meter: str) -> Response:
    c = container()
    return ok(present.meter_json(meters.get_meter(c.namespace, path_param(meter), meta=c.meta)))


@app.put("/api/v1/meters/<meter>")
def update_meter(meter: str) -> Response:
    c = container()
    m = meters.update_meter(c.namespace, path_param(meter), request_body(app), meta=c.meta, now=c.clock.now())
    return ok(present.meter_json(m))


@app.delete("/api/v1/meters/<meter>")
def delete_meter(meter: str) -> Response:
    c = container()
    meters.delete_meter(c.namespace, path_param(meter), meta=c.meta, now=c.clock.now(), ents=c.entitlements,
                        catalog=c.catalog_store())
    return no_content()


def _query_response(result: dict[str, Any]) -> Response:
    if wants_csv(_event()):
        return Response(200, "text/csv", present.query_csv(result))
    return ok(present.query_json(result))


@app.get("/api/v1/meters/<meter>/query")
def query_meter_get(meter: str) -> Response:
    c = container()
    params = query.group_by_subjects(query.params_from_query_string(query_multi(_event())))
    return _query_response(query.query_meter(c.namespace, path_param(meter), params, meta=c.meta, usage=c.usage))


@app.post("/api/v1/meters/<meter>/query")
def query_meter_post(meter: str) -> Response:
    c = container()
    params = query.group_by_subjects(query.params_from_body(request_body(app)))
    return _query_response(query.query_meter(c.namespace, path_param(meter), params, meta=c.meta, usage=c.usage))


@app.get("/api/v1/meters/<meter>/subjects")
def meter_subjects(meter: str) -> Response:
    c = container()
    m = meters.get_meter(c.namespace, path_param(meter), meta=c.meta)
    qs = query_multi(_event())
    start, end = params.one(qs, "from"), params.one(qs, "to")
    return ok(c.usage.subjects(c.namespace, m.id, parse_rfc3339(start, "from") if start is not None else None,
                               parse_rfc3339(end, "to") if end is not None else None))


# -- events (list) --------------------------------------------------------------------------------------
@app.get("/api/v1/events")
def list_events() -> Response:
    c = container()
    qs = query_multi(_event())
    limit = pages.limit(qs, maximum=100)
    start, end = params.one(qs, "from"), params.one(qs, "to")
    subjects = qs.get("subject")
    if "customerId" in qs:  # OpenMeter: the events of these customers' subjects
        owned = set()
        for ref in qs["customerId"]:
            cust = c.meta.get_customer(c.namespace, ref)
            if cust is None:
                raise ValidationFailed.at("customerId", f"customer {ref[:64]!r} not found")
            owned.update(cust.get("usageAttribution", {}).get("subjectKeys", []))
        subjects = sorted(owned if subjects is None else owned & set(subjects))
        if not subjects:
            return ok([])
    ingested_from, ingested_to = params.one(qs, "ingestedAtFrom"), params.one(qs, "ingestedAtTo")
    begin = parse_rfc3339(start, "from") if start is not None else None
    finish = parse_rfc3339(end, "to") if end is not None else None
    if ingested_from is None and ingested_to is None:
        rows = c.usage.list_events(c.namespace, subjects=subjects, start=begin, end=finish,
                                   event_id=params.one(qs, "id"), limit=limit)
    else:  # OpenMeter's ingestion-time filters (issue 16)
        rows = events_v2.ingested_between(
            c.usage, c.namespace, subjects=subjects, start=begin, end=finish, event_id=params.one(qs, "id"),
            limit=limit, ingested_from=parse_rfc3339(ingested_from, "ingestedAtFrom") if ingested_from else None,
            ingested_to=parse_rfc3339(ingested_to, "ingestedAtTo") if ingested_to else None)
    return ok(events_v2.listed_events(c.namespace, rows, meta=c.meta))


# -- subjects ---------------------------------------------------------------------------------------------
@app.get("/api/v1/subjects")
def list_subjects() -> Response:
    c = container()
    return ok([present.subject_json(s) for s in c.meta.list_subjects(c.namespace)])


@app.post("/api/v1/subjects")
def upsert_subjects() -> Response:
    c = container()
    rows = directory.upsert_subjects(c.namespace, request_body(app), meta=c.meta, now=c.clock.now())
    return ok([present.subject_json(s) for s in rows])


@app.get("/api/v1/subjects/<subject>")
def get_subject(subject: str) -> Response:
    c = container()
    return ok(present.subject_json(directory.get_subject(c.namespace, path_param(subject), meta=c.meta)))


@app.delete("/api/v1/subjects/<subject>")
def delete_subject(subject: str) -> Response:
    c = container()
    directory.delete_subject(c.namespace, path_param(subject), meta=c.meta, now=c.clock.now())
    return no_content()


# -- customers --------------------------------------------------------------------------------------------
@app.get("/api/v1/customers")
def list_customers() -> Response:
    c = container()
    qs = query_multi(_event())
    listed = directory.list_customers(c.namespace, qs, meta=c.meta, on_plan=lambda key: (
        subscriptions.customers_on_plan(c.namespace, key, store=c.catalog_store(), now=c.clock.now())))
    listed["items"] = subscriptions.with_running(c.namespace, listed["items"], expand=_expands_subscriptions(qs),
                                                 store=c.catalog_store(), now=c.clock.now())
    return ok(listed)


def _expands_subscriptions(qs: dict[str, list[str]]) -> bool:
    return "subscriptions" in (qs.get("expand") or [])


@app.post("/api/v1/customers")
def create_customer() -> Response:
    c = container()
    return ok(directory.create_customer(c.namespace, request_body(app), meta=c.meta, now=c.clock.now(),
                                        taking=_taking(c)), 201)


@app.get("/api/v1/customers/<customer>")
def get_customer(customer: str) -> Response:
    c = container()
    qs = query_multi(_event())
    query_contract.conform("GET", "/api/v1/customers/{customerIdOrKey}", qs)  # expand
    doc = directory.get_customer(c.namespace, path_param(customer), meta=c.meta)
    if _expands_subscriptions(qs):  # OpenMeter shows a customer's subscriptions (and currentSubscriptionId) then only
        (doc,) = subscriptions.with_running(c.namespace, [doc], expand=True, store=c.catalog_store(), now=c.clock.now())
    return ok(doc)


@app.put("/api/v1/customers/<customer>")
def update_customer(customer: str) -> Response:
    c = container()
    return ok(directory.update_customer(c.namespace, path_param(customer), request_body(app), meta=c.meta,
                                        now=c.clock.now(), taking=_taking(c)))


def _taking(c: Container) -> directory.Taking:
    """A customer's create or update taking subjects: one entitlement per feature among its subjects, none of a
    feature its subscriptions grant."""
    return partial(entitlements.customer_takes, c.namespace, store=c.entitlements, meta=c.meta,
                   reserved=subscriptions.refuse_granted(c.namespace, store=c.catalog_store(), now=c.clock.now()))


@app.delete("/api/v1/customers/<customer>")
def delete_customer(customer: str) -> Response:
    c = container()
    now = c.clock.now()
    doc = directory.get_customer(c.namespace, path_param(customer), meta=c.meta)
    deletable = partial(subscriptions.check_customer_deletable, c.namespace, doc["id"], store=c.catalog_store(), now=now)
    deletable()
    directory.delete_customer(c.namespace, doc["id"], meta=c.meta, now=now, check=deletable)
    return no_content()


# -- meta -------------------------------------------------------------------------------------------------
@app.get("/api/v1/openapi.json")
def openapi() -> Response:
    return Response(200, JSON, document())


@app.get("/healthz")
def healthz() -> Response:
    return ok({"status": "ok"})


@app.get("/readyz")
def readyz() -> Response:
    """200 when every store and the bus answer, else 503; each with its latency."""
    c = container()
    checks = {"metaStore": c.meta.ping, "usageStore": c.usage.ping}
    if c.bus is not None and hasattr(c.bus, "ping"):
        checks["eventBus"] = c.bus.ping
    ready, results = health.readiness(checks)
    return Response(200 if ready else 503, JSON, jsonx.dumps({"status": "ready" if ready else "not ready",
                                                                "checks": results}))


@lambda_entry(API_GATEWAY, logger=logger)
def lambda_handler(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    return as_caller(event, lambda: app.resolve(event, context))  # type: ignore[arg-type]


