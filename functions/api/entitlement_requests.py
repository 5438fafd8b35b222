"""What the entitlement routes that make a new entitlement (v1 and v2 create and override) each start from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

from billow.bootstrap import Container
from billow.services import subscriptions
from billow.services.entitlements import Reserved, requested
from functions.api.bodies import request_body


def new_entitlement(c: Container, router: BaseRouter) -> tuple[datetime, Any, Reserved]:
    """(the request's instant, its entitlement body (entitlements.requested: a null OpenMeter does not allow is a
    400), the check refusing a feature the customer's subscriptions grant at that instant (refuse_granted))."""
    now = c.clock.now()
    return now, requested(request_body(router)), subscriptions.refuse_granted(c.namespace, store=c.catalog_store(), now=now)
