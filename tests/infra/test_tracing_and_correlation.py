"""Issue 18 item 10: Powertools Tracer on every handler and X-Ray tracing on every function, and correlation ids in
the logs (API Gateway's request id for the HTTP functions, the SQS message ids for the jobs, the Kafka partitions
and offsets of the batch for the usage sink), on the handler's own lines and on the `billow.*` library loggers'.

Every handler is wrapped by functions/observability.lambda_entry; with a recording X-Ray provider each one opens its
`## lambda_handler` subsegment. Outside Lambda (no LAMBDA_TASK_ROOT) or with POWERTOOLS_TRACE_DISABLED the Tracer is
off and a handler runs without an X-Ray daemon; the log lines are captured from a handler run in a child process
that looks like Lambda (its environment variables and a context object)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.support import HANDLERS, Synth, synthesize

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "events"
API_GATEWAY = "requestContext.requestId"
SQS = "Records[*].messageId"
CORRELATION = {"api": API_GATEWAY, "ingest": API_GATEWAY, "authorizer": API_GATEWAY, "stripe_webhook": API_GATEWAY,
               "usage_sink": "kafka", "billing_run": SQS, "notify_dispatch": SQS, "migrate": None}


def test_every_handler_is_wrapped_with_the_tracer_and_its_correlation_id() -> None:
    from functions import observability

    assert set(CORRELATION) == set(HANDLERS)
    for name in HANDLERS:
        handler = importlib.import_module(f"functions.{name}.handler").lambda_handler
        assert getattr(handler, "billow_entry", None) == {"tracer": observability.tracer,
                                                          "correlation_id_path": CORRELATION[name]}, name


class Subsegment:
    def __init__(self, name: str, log: list[tuple[str, str, Any]]) -> None:
        self.name, self.log = name, log

    def put_annotation(self, key: str, value: Any) -> None:
        self.log.append((self.name, key, value))

    def put_metadata(self, key: str, value: Any, namespace: str = "") -> None:
        self.log.append((self.name, f"metadata:{key}", value))

    def add_exception(self, *args: Any, **kwargs: Any) -> None:
        self.log.append((self.name, "exception", args[0] if args else None))


class RecordingProvider:
    """Stands in for the X-Ray provider: records the subsegments a handler opens and their annotations."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, Any]] = []

    @contextlib.contextmanager
    def in_subsegment(self, name: str, **kwargs: Any) -> Iterator[Subsegment]:
        self.log.append((name, "open", None))
        yield Subsegment(name, self.log)


class Context:
    function_name, memory_limit_in_mb, aws_request_id = "billow-test-fn", 512, "lambda-req-1"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:billow-test-fn"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> RecordingProvider:
    from functions import observability

    provider = RecordingProvider()
    monkeypatch.setattr(observability.tracer, "provider", provider)
    monkeypatch.setattr(observability.tracer, "disabled", False)
    return provider


def test_a_traced_handler_opens_its_subsegment_and_does_not_send_the_response(recording: RecordingProvider) -> None:
    """The ingest handler refuses a bad content type before it needs any store: enough to see the wrapping."""
    from functions.ingest.handler import lambda_handler

    event = json.loads((EVENTS / "apigw_v2_ingest_batch.json").read_text())
    event["headers"] = {**event.get("headers", {}), "content-type": "text/plain"}
    out = lambda_handler(event, Context())
    assert out["statusCode"] == 415
    assert ("## lambda_handler", "open", None) in recording.log
    assert ("## lambda_handler", "ColdStart", True) in recording.log or \
        ("## lambda_handler", "ColdStart", False) in recording.log
    # responses are never copied into X-Ray (the authorizer's answers and minted API keys pass through handlers)
    assert not [e for e in recording.log if e[1].startswith("metadata:")], recording.log


def test_the_tracer_is_off_outside_lambda_and_when_disabled(tmp_path: Path) -> None:
    """No X-Ray daemon here: the Tracer is disabled outside Lambda (no LAMBDA_TASK_ROOT) and inside it with
    POWERTOOLS_TRACE_DISABLED, and the handler runs and answers either way."""
    event = json.loads((EVENTS / "apigw_v2_ingest_batch.json").read_text())
    event["headers"] = {**event.get("headers", {}), "content-type": "text/plain"}
    script = ("import json, sys\nfrom functions import observability\nfrom functions.ingest.handler import "
              "lambda_handler\nout = lambda_handler(json.loads(sys.argv[1]), None)\n"
              "print(json.dumps({'disabled': bool(observability.tracer.disabled), 'status': out['statusCode']}))")
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{REPO}:{REPO / 'shared'}",
            "BILLOW_META_STORE_URL": f"sqlite:///{tmp_path / 'm.db'}", "BILLOW_USAGE_STORE": "memory"}
    for extra in ({}, {"LAMBDA_TASK_ROOT": str(REPO), "AWS_LAMBDA_FUNCTION_NAME": "billow-t-ingest",
                       "POWERTOOLS_TRACE_DISABLED": "true"}):
        done = subprocess.run([sys.executable, "-c", script, json.dumps(event)], env={**base, **extra},
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.splitlines()[-1]) == {"disabled": True, "status": 415}, extra


LOG_SCRIPT = """
import importlib, json, logging, sys
name, event, real = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "real"
handler = importlib.import_module(f"functions.{name}.handler").lambda_handler

class Context:
    function_name, memory_limit_in_mb, aws_request_id = "billow-t-" + name, 512, "lambda-req-1"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:billow-t-" + name
    def get_remaining_time_in_millis(self):
        return 60_000

if not real:  # the handler's entry with its correlation path, around code that logs through a billow.* logger
    from functions import observability

    def inner(event, context):
        logging.getLogger("billow.test").info("library line")
        return {}

    handler = observability.lambda_entry(handler.billow_entry["correlation_id_path"])(inner)
if real:  # the deploy's migrate run, before the function (a Lambda container only checks the schema)
    from billow.bootstrap import Settings
    from billow.migrations import migrate_all

    migrate_all(Settings.from_env())
if real and name == "ingest":  # a fault past the request's checks: the handler logs it (billow.web) and answers 500
    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    sys.modules["functions.ingest.handler"].ingest_events = broken
try:
    print(json.dumps({"result": handler(event, Context())}, default=str))
except Exception as exc:
    print(json.dumps({"raised": repr(exc)}))
"""


def kafka_positions(event: dict[str, Any]) -> str:
    return ",".join(f"{r[0]['topic']}/{r[0]['partition']}@{r[0]['offset']}-{r[-1]['offset']}"
                    for r in event["records"].values())


@pytest.mark.parametrize("name", ["ingest", "billing_run", "usage_sink"])
def test_every_log_line_carries_the_correlation_id(name: str, tmp_path: Path) -> None:
    """ingest: the real handler, with a fault injected past the request's checks, logs it through `billow.web` (500);
    billing_run: the real handler runs two job messages and logs each run through its own Logger; usage_sink: its
    entry (the real MSK event's partitions and offsets) around code that logs through a `billow.*` logger."""
    meta = f"sqlite:///{tmp_path / 'm.db'}"
    if name == "ingest":
        event, mode, message = json.loads((EVENTS / "apigw_v2_ingest_batch.json").read_text()), "real", "unhandled error"
        want = event["requestContext"]["requestId"]
    elif name == "billing_run":
        job = json.dumps({"job": "billing_run", "namespace": "default"})
        event = {"Records": [{"messageId": "m-1", "body": job}, {"messageId": "m-2", "body": job}]}
        mode, message, want = "real", "billing run", "m-1,m-2"
    else:
        event, mode, message = json.loads((EVENTS / "msk_usage_batch.json").read_text()), "inner", "library line"
        want = kafka_positions(event)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{REPO}:{REPO / 'shared'}", "AWS_REGION": "eu-west-1",
           "AWS_LAMBDA_FUNCTION_NAME": f"billow-t-{name}", "LAMBDA_TASK_ROOT": str(REPO),
           "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_SERVICE_NAME": name, "POWERTOOLS_LOG_LEVEL": "INFO",
           "BILLOW_META_STORE_URL": meta, "BILLOW_USAGE_STORE": "memory"}
    if name == "ingest":  # a producer that is never used (the fault comes first): nothing listens there
        env.update({"BILLOW_BUS": "kafka", "BILLOW_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
    done = subprocess.run([sys.executable, "-c", LOG_SCRIPT, name, json.dumps(event), mode], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.startswith("{")]
    logged = [line for line in lines if str(line.get("message", "")).startswith(message)]
    assert logged, done.stdout + done.stderr
    for line in logged:
        assert line["correlation_id"] == want, line
        assert line["function_request_id"] == "lambda-req-1", line  # and Lambda's own request id
    if name == "billing_run":
        assert len(logged) == 2


def test_tracing_is_active_on_every_function_with_xray_rights(tmp_path_factory: pytest.TempPathFactory,
                                                             lambda_assets: Any) -> None:
    s: Synth = synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "prod", "account": "123456789012"},
                          lambda_assets)
    for name in HANDLERS:
        fn_id, fn = s.function(name)
        assert fn["Properties"]["TracingConfig"] == {"Mode": "Active"}, name
        assert {"xray:PutTraceSegments", "xray:PutTelemetryRecords"} <= s.actions(s.role_of(name)), name


def test_the_core_layer_carries_the_xray_sdk(lambda_assets: Any) -> None:
    deps, _, _ = lambda_assets
    assert (deps / "python" / "aws_xray_sdk").is_dir()  # Powertools' Tracer imports it in Lambda
