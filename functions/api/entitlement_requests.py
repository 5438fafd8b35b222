"""What the entitlement routes that make a new entitlement (v1 and v2 create and override) each start from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billow.bootstrap import Container
from billow.services import subscriptions
from billow.services.entitlements import Reserved, requested
from billow.web.http import json_body


def new_entitlement(c: Container, event: dict[str, Any]) -> tuple[datetime, Any, Reserved]:
    """(the request's instant, its entitlement body (entitlements.requested: a null OpenMeter does not allow is a
    400), the check refusing a feature the customer's subscriptions grant at that instant (refuse_granted))."""
    now = c.clock.now()
    return now, requested(json_body(event)), subscriptions.refuse_granted(c.namespace, store=c.catalog_store(), now=now)
