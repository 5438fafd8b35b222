"""Notification dispatch Lambda. Triggered by SQS: the EventBridge Scheduler tick (every minute, through the
job queue: evaluate balance thresholds and resets, then deliver) and the wake-up messages writers put on the
notifications queue when they create an event or a retry comes due (deliver only). Delivery state lives in
the database, so overlapping invocations never send one delivery twice."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.data_classes import SQSEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow.adapters import delivery
from billow.adapters.sql_notifications import SqlNotificationStore
from billow.bootstrap import Container, container
from billow.services import notifications
from billow.services.notifications import Send, Wake

BUDGET_S = 240.0  # stop starting deliveries after this (the job timeout is 5 minutes)
BATCH = 10  # deliveries per pass between budget checks (each attempt is bounded by the senders' 5 s timeout)
_senders: delivery.Senders | None = None


def senders() -> delivery.Senders:
    global _senders
    if _senders is None:
        _senders = delivery.Senders()
    return _senders


def run(c: Container, *, evaluate: bool, send: Send | None = None, wake: Wake = delivery.wake,
        budget_s: float = BUDGET_S, remaining_s: Callable[[], float] | None = None) -> dict[str, int]:
    """One dispatcher pass: (on a tick) create the events that are due, then deliver until nothing is due."""
    store = c.store(SqlNotificationStore)
    created = 0
    if evaluate:
        created = len(notifications.evaluate(store=store, entitlements=c.entitlements, meta=c.meta, usage=c.usage,
                                             now=c.clock.now(), wake=lambda _: None))
    attempted, started = 0, time.monotonic()
    while time.monotonic() - started < budget_s and (remaining_s is None or remaining_s() > 30):
        n = notifications.dispatch_due(store=store, send=send or senders(), clock=c.clock.now, wake=wake,
                                       limit=BATCH)
        attempted += n
        if n == 0:
            break
    return {"created": created, "attempted": attempted}


def is_tick(body: str) -> bool:
    try:
        msg = json.loads(body)
    except ValueError:
        return False
    return isinstance(msg, dict) and "scheduledTime" in msg


@event_source(data_class=SQSEvent)
def lambda_handler(event: SQSEvent, context: LambdaContext | None) -> dict[str, Any]:
    tick = any(is_tick(r.body) for r in event.records)
    remaining = (lambda: context.get_remaining_time_in_millis() / 1000) if context is not None else None
    return run(container(), evaluate=tick, remaining_s=remaining)
