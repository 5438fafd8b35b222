"""Billing run Lambda: the EventBridge schedule puts `{"job": "billing_run", "namespace": ...}` on this job's SQS
queue; each message runs one billing run for its namespace (billow.services.jobs.billing_run). Idempotent: a
message delivered twice, or two runs at once, bill nothing twice.

The same queue carries the jobs the API accepted (`{"job": "backtest", "namespace": ..., "id": ...}`, sent by
adapters/job_runners.SqsJobRunner): each runs with billow.services.jobs.run_job, which claims the job in the meta
store (a message delivered twice runs it once) and writes its progress and result there. A job's own failure is
in its record, never a failed invocation (SQS would only deliver it again to a job already failed).

One customer that cannot be billed never stops the others: the run bills everyone else and records it (logged
with customer and subscription, metric `billing_run_failures`). After every message is run the handler raises
`BillingRunFailed`: the invocation counts as a Lambda error (the function's error alarm pages) and SQS delivers
the tick again, which bills only what is still unbilled (the failed customer), then the jobs DLQ (alarmed too)."""

from __future__ import annotations

import json
import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow.bootstrap import container
from billow.services import jobs
from functions.observability import SQS_MESSAGES, lambda_entry

logger = Logger(service="billow-billing-run")
metrics = Metrics(namespace="Billow", service="billing_run")
IN_LAMBDA = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


class BillingRunFailed(RuntimeError):
    """Some customers could not be billed (all others were); `runs` holds every run, `failures` what failed."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        self.runs = runs
        self.failures = [dict(f, namespace=r["namespace"]) for r in runs for f in r["failures"]]
        who = ", ".join(f"{f['customerId']} (subscription {f['subscriptionId']})" for f in self.failures)
        super().__init__(f"billing run: {len(self.failures)} failure(s), the other customers were billed: {who}")


@lambda_entry(SQS_MESSAGES, logger=logger)
def lambda_handler(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    c = container()
    runs = []
    for record in event.get("Records") or [{"body": json.dumps(event)}]:
        message = json.loads(record.get("body") or "{}")
        namespace = message.get("namespace") or c.settings.namespace
        if message.get("job") in jobs.JOB_KINDS:
            with c.acting_for(namespace):
                done = jobs.run_job(c, message["job"], namespace, str(message.get("id") or ""))
            logger.info("job", extra={"namespace": namespace, **done})
            runs.append({"namespace": namespace, **done, "failures": []})
            continue
        with c.acting_for(namespace):
            result = jobs.billing_run(c).to_json()
        logger.info("billing run", extra={"namespace": namespace, **result})
        for failure in result["failures"]:
            logger.error("billing run: a customer could not be billed", extra={"namespace": namespace, **failure})
        runs.append({"namespace": namespace, **result})
    failed = sum(len(r["failures"]) for r in runs)
    if IN_LAMBDA:  # CloudWatch EMF
        metrics.add_metric(name="billing_run_failures", unit=MetricUnit.Count, value=failed)
        metrics.flush_metrics()
    if failed:
        raise BillingRunFailed(runs)
    return {"runs": runs}
