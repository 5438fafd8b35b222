"""What every Lambda handler is wrapped in (issue 18 item 10): Powertools' Tracer (X-Ray; the functions run with
active tracing, infra/constructs/functions.py) and the Logger's Lambda context with a correlation id, on the
handler's own log lines and on the `billow.*` library loggers' (the services log through stdlib logging).

    @lambda_entry(API_GATEWAY)             # or SQS_MESSAGES, KAFKA_BATCH, None
    def lambda_handler(event, context): ...

Correlation ids: API Gateway's request id (`requestContext.requestId`: the HTTP functions and the authorizer, the
id API Gateway logs and returns as `apigw-requestid`), the SQS message ids of the batch (the scheduled jobs), the
Kafka partitions and offset ranges of the batch (`topic/partition@first-last,...`: the usage sink). Lambda's own
request id is on every line too (`function_request_id`).

The Tracer is off outside Lambda (no LAMBDA_TASK_ROOT) or with POWERTOOLS_TRACE_DISABLED=true, so handlers run
without an X-Ray daemon; handler responses are never copied into traces (the authorizer's answers and minted API keys
pass through them). A handler called in-process without a Lambda context (billow serve's hosts, tests) skips the
logging context: the Logger's keys are per process, and those hosts serve several requests at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import jmespath
from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers


class _Untraced:
    """The Tracer's provider where tracing is off: no X-Ray SDK to load (aws_xray_sdk.core costs ~0.3 s to import)."""

    @contextlib.contextmanager
    def in_subsegment(self, name: str = "", **kwargs: Any) -> Iterator[_Untraced]:
        yield self

    in_subsegment_async = in_subsegment

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        pass

    def add_exception(self, *args: Any, **kwargs: Any) -> None:
        pass

    def patch(self, modules: Any) -> None:
        pass

    def patch_all(self) -> None:
        pass


def tracing_on(env: Mapping[str, str] = os.environ) -> bool:
    """Powertools' own rule: tracing only inside Lambda (LAMBDA_TASK_ROOT), not under SAM local or Chalice, and not
    with POWERTOOLS_TRACE_DISABLED set true."""
    disabled = env.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in ("1", "true", "yes", "on")
    return bool(env.get("LAMBDA_TASK_ROOT")) and not (disabled or env.get("AWS_SAM_LOCAL")
                                                     or env.get("AWS_CHALICE_CLI_MODE"))


# X-Ray: Secrets Manager/SQS/S3/RDS token calls (botocore) and ClickHouse's HTTP (http.client) as subsegments.
tracer = (Tracer(patch_modules=("botocore", "httplib")) if tracing_on()
          else Tracer(disabled=True, auto_patch=False, provider=_Untraced()))  # type: ignore[arg-type]
API_GATEWAY = correlation_paths.API_GATEWAY_HTTP  # requestContext.requestId (payload 2.0; the authorizer's too)
SQS_MESSAGES = "Records[*].messageId"
KAFKA_BATCH = "kafka"  # not a JMESPath: the batch's partitions and offsets (kafka_positions)
IN_LAMBDA = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))

F = TypeVar("F", bound=Callable[..., Any])
_default_logger: Logger | None = None


def kafka_positions(event: dict[str, Any]) -> str | None:
    """`topic/partition@first-last` for each partition of an MSK batch, comma-separated."""
    parts = []
    for records in (event.get("records") or {}).values():
        if records:
            first, last = records[0], records[-1]
            parts.append(f"{first.get('topic')}/{first.get('partition')}@{first.get('offset')}-{last.get('offset')}")
    return ",".join(parts) or None


def correlation_id(event: Any, path: str | None) -> str | None:
    if path is None or not isinstance(event, dict):
        return None
    if path == KAFKA_BATCH:
        return kafka_positions(event)
    found = jmespath.search(path, event)
    if isinstance(found, list):
        return ",".join(str(x) for x in found if x is not None) or None
    return None if found is None else str(found)


def default_logger() -> Logger:
    """The Logger of a handler that has none of its own (service from POWERTOOLS_SERVICE_NAME)."""
    global _default_logger
    if _default_logger is None:
        _default_logger = Logger()
    return _default_logger


def _route_library_logs(logger: Logger) -> None:
    """`billow.*` records through the handler's Logger (JSON, with its keys: the correlation id), not the runtime's
    plain-text root handler. Lambda only: elsewhere the host's logging (and pytest's capture) stays as it is."""
    logging.getLogger("billow")  # registered, so copy_config finds it
    copy_config_to_registered_loggers(source_logger=logger, include={"billow"})


def lambda_entry(correlation_id_path: str | None, *, logger: Logger | None = None) -> Callable[[F], F]:
    """Wrap a Lambda handler: X-Ray subsegment (`## <handler>`, ColdStart annotation), the Logger's Lambda context
    and the correlation id found at `correlation_id_path` in the raw event (JMESPath, or KAFKA_BATCH)."""

    def wrap(handler: F) -> F:
        log = logger or default_logger()
        traced = tracer.capture_lambda_handler(handler, capture_response=False)
        logged = log.inject_lambda_context(traced, clear_state=False)
        if IN_LAMBDA:
            _route_library_logs(log)

        @functools.wraps(handler)
        def entry(event: Any, context: Any) -> Any:
            if context is None:  # in-process host or test: no Lambda context to log
                return (handler if tracer.disabled else traced)(event, context)
            log.set_correlation_id(correlation_id(event, correlation_id_path))
            return logged(event, context)

        entry.billow_entry = {"tracer": tracer, "correlation_id_path": correlation_id_path}  # type: ignore[attr-defined]
        return entry  # type: ignore[return-value]

    return wrap
