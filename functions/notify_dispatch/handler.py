"""Notification dispatch Lambda. Triggered by SQS: the EventBridge Scheduler tick (every minute, through the
job queue: evaluate balance thresholds and resets, then deliver) and the wake-up messages writers put on the
notifications queue when they create an event or a retry comes due (deliver only). Delivery state lives in
the database, so overlapping invocations never send one delivery twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.data_classes import SQSEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow.adapters import delivery
from billow.bootstrap import Container, container
from billow.services import jobs
from billow.services.notifications import Send, Wake
from functions.observability import SQS_MESSAGES, lambda_entry

BUDGET_S = jobs.DISPATCH_BUDGET_S
_senders: delivery.Senders | None = None


def senders() -> delivery.Senders:
    global _senders
    if _senders is None:
        _senders = delivery.Senders()
    return _senders


def run(c: Container, *, evaluate: bool, send: Send | None = None, wake: Wake = delivery.wake,
        budget_s: float = BUDGET_S, remaining_s: Callable[[], float] | None = None) -> dict[str, int]:
    """One dispatcher pass (billow.services.jobs.dispatch_notifications) with this process's senders."""
    return jobs.dispatch_notifications(c, evaluate=evaluate, send=send or senders(), wake=wake, budget_s=budget_s,
                                       remaining_s=remaining_s)


def is_tick(body: str) -> bool:
    try:
        msg = json.loads(body)
    except ValueError:
        return False
    return isinstance(msg, dict) and "scheduledTime" in msg


@lambda_entry(SQS_MESSAGES)
@event_source(data_class=SQSEvent)
def lambda_handler(event: SQSEvent, context: LambdaContext | None) -> dict[str, Any]:
    tick = any(is_tick(r.body) for r in event.records)
    remaining = (lambda: context.get_remaining_time_in_millis() / 1000) if context is not None else None
    return run(container(), evaluate=tick, remaining_s=remaining)
