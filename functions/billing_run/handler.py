"""Billing run Lambda: the EventBridge schedule puts `{"job": "billing_run", "namespace": ...}` on this job's SQS
queue; each message runs one billing run for its namespace (billow.services.billing.run). Idempotent: a
message delivered twice, or two runs at once, bill nothing twice."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow.adapters.billing_apps import run_billing
from billow.bootstrap import container

logger = Logger(service="billow-billing-run")


def lambda_handler(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    c = container()
    runs = []
    for record in event.get("Records") or [{"body": json.dumps(event)}]:
        message = json.loads(record.get("body") or "{}")
        namespace = message.get("namespace") or c.settings.namespace
        with c.acting_for(namespace):
            result = run_billing(c).to_json()
        logger.info("billing run", extra={"namespace": namespace, **result})
        runs.append({"namespace": namespace, **result})
    return {"runs": runs}
