"""The billing and notification harnesses (in-process handlers, a clock the test moves, a webhook receiver), for
tests/aws/test_schedule_fires.py to run each scheduled job from its schedule's message."""

from tests.billing.conftest import billow
from tests.notifications.conftest import receiver, world

__all__ = ["billow", "receiver", "world"]
