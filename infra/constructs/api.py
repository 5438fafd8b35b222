"""HTTP API (API Gateway v2, payload format 2.0): ingest on its own function (its own concurrency and
throttling), Stripe's webhook on its own, everything else on the API function, every route but PUBLIC_ROUTES
behind the API-key Lambda authorizer (which also accepts portal tokens). Access logs as JSON; stage-wide
throttling; the 5xx rate and p99 latency alarms. It makes the api, authorizer and stripe_webhook functions; ingest's
is made by constructs/ingest.py. What the API function may touch besides the stores is granted by the capabilities
it serves (constructs/billing.py, notifications.py)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.constructs.functions import BillowFunctions, construct_id
from infra.constructs.observability import Alarms

ROUTES = {  # route key -> function name; an explicit route wins over {proxy+} in API Gateway
    "POST /api/v1/events": "ingest",
    "ANY /api/v1/{proxy+}": "api",
    "ANY /api/v2/{proxy+}": "api",  # OpenMeter's v2 entitlement API, the official SDKs' default paths
    "GET /api/v1/openapi.json": "api",
    "GET /": "api",
    "GET /healthz": "api",
    "GET /readyz": "api",
    "POST /api/v1/apps/stripe/webhook": "stripe_webhook",
    "POST /api/v1/apps/{appId}/stripe/webhook": "stripe_webhook",  # an installed Stripe app's own (issue 16)
    "GET /portal": "api",
    "GET /portal/{proxy+}": "api",
    "GET /api/docs": "api",
    "GET /api/docs/{proxy+}": "api",
    "GET /console": "api",  # the operator console's static page (issue 20)
    "GET /console/{proxy+}": "api",
}
HEALTH = ("liveness and readiness: load balancers and uptime probes carry no API key, and the answer holds no "
          "data")
PORTAL_PAGE = ("the customer portal's static web page (HTML, script, styles; no data): its portal token stays in "
               "the URL fragment, and every data call it makes, under /api/v1/portal/*, goes through the "
               "authorizer, which accepts portal tokens")
CONSOLE_PAGE = ("the operator console's static web page (HTML, script, styles; no data): every data call it makes "
                "goes to /api/v1/* through the authorizer with the admin key the operator types in")
API_DOCS = ("the API reference page (HTML and the vendored Redoc script): it renders the public OpenAPI document and "
            "holds no data")
PUBLIC_ROUTES = {  # route key -> why it needs no API key (infra/nag.py states it); every other route needs one
    "GET /api/v1/openapi.json": "the OpenAPI document: a public description of the API, no data",
    "GET /": "the landing page: links to the API reference, the portal and health, no data",
    "GET /healthz": HEALTH,
    "GET /readyz": HEALTH,
    "POST /api/v1/apps/stripe/webhook": (
        "Stripe's webhook deliveries carry no API key; Stripe signs each request instead, and the handler "
        "verifies the Stripe-Signature header (HMAC with the webhook secret, timestamp within 5 minutes) before "
        "reading anything, answering 400 to a bad or stale signature"),
    "POST /api/v1/apps/{appId}/stripe/webhook": (
        "an installed Stripe app's webhook: Stripe's deliveries carry no API key; Stripe signs each request with "
        "the secret of the endpoint the app registered, and the handler verifies the Stripe-Signature header "
        "against that app's secret (timestamp within 5 minutes) before reading anything, answering 400 to a bad or "
        "stale signature and 404 to an id that is no Stripe app"),
    "GET /portal": PORTAL_PAGE,
    "GET /portal/{proxy+}": PORTAL_PAGE,
    "GET /api/docs": API_DOCS,
    "GET /api/docs/{proxy+}": API_DOCS,
    "GET /console": CONSOLE_PAGE,
    "GET /console/{proxy+}": CONSOLE_PAGE,
}
AUTH_CACHE = Duration.minutes(5)  # a revoked key keeps working at most this long
ACCESS_LOG_FORMAT = ('{"requestId":"$context.requestId","ip":"$context.identity.sourceIp",'
                     '"method":"$context.httpMethod","path":"$context.path","status":"$context.status",'
                     '"latencyMs":"$context.responseLatency","error":"$context.integrationErrorMessage"}')


class HttpApi(Construct):
    def __init__(self, scope: Construct, cid: str, *, name: str, fns: BillowFunctions, ingest: lambda_.IFunction,
                 alarms: Alarms, rate_limit: int, burst_limit: int, retain_logs: bool) -> None:
        super().__init__(scope, cid)
        self.api_fn = fns.function("api", usage=True)
        self.authorizer_fn = fns.function("authorizer", memory=512, timeout=Duration.seconds(10))  # CPU for 10 s
        self.stripe_fn = fns.function("stripe_webhook")  # invoices' payment status, from Stripe
        functions: dict[str, lambda_.IFunction] = {"api": self.api_fn, "ingest": ingest,
                                                   "stripe_webhook": self.stripe_fn}
        self.access_logs = logs.LogGroup(
            self, "AccessLogs", retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.RETAIN if retain_logs else RemovalPolicy.DESTROY)
        self.api = apigw.HttpApi(self, "Http", api_name=name, create_default_stage=False,
                                 description="Billow REST API (OpenMeter v1 compatible)")
        self.stage = apigw.HttpStage(self, "DefaultStage", http_api=self.api, auto_deploy=True,
                                     throttle=apigw.ThrottleSettings(rate_limit=rate_limit, burst_limit=burst_limit))
        cfn_stage = self.stage.node.default_child
        assert isinstance(cfn_stage, apigw.CfnStage)
        cfn_stage.access_log_settings = apigw.CfnStage.AccessLogSettingsProperty(
            destination_arn=self.access_logs.log_group_arn, format=ACCESS_LOG_FORMAT)
        targets = {name: integrations.HttpLambdaIntegration(f"{construct_id(name)}Integration", fn)
                   for name, fn in functions.items()}
        # API keys: the authorizer checks the Bearer key and passes its namespace and scopes on; API Gateway
        # caches its answer per Authorization header, so the handlers enforce scopes per route.
        self.authorizer = authorizers.HttpLambdaAuthorizer(
            "ApiKeys", self.authorizer_fn, authorizer_name=f"{name}-api-keys",
            response_types=[authorizers.HttpLambdaResponseType.SIMPLE],
            identity_source=["$request.header.Authorization"], results_cache_ttl=AUTH_CACHE)
        self.routes: dict[str, apigw.HttpRoute] = {}
        for key, fn_name in ROUTES.items():
            method, path = key.split(" ", 1)
            (self.routes[key],) = self.api.add_routes(
                path=path, methods=[apigw.HttpMethod(method)], integration=targets[fn_name],
                authorizer=None if key in PUBLIC_ROUTES else self.authorizer)
        alarms.api(self.stage)

    @property
    def url(self) -> str:
        return self.api.api_endpoint
