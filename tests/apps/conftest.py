"""Apps through the real handlers (tests/entitlements' harness: SQLite meta store, moving clock), with the Stripe
stand-in (tests/stripe_standin) as Stripe: its webhooks delivered over HTTP to the webhook Lambda handler."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import ThreadingHTTPServer

import pytest

from tests.entitlements.conftest import Billow, Clock, billow
from tests.stripe_standin.server import StandIn
from tests.support.webhook_receiver import WebhookReceiver

__all__ = ["Billow", "Clock", "billow", "stripe"]


@pytest.fixture
def stripe(billow: Billow) -> Iterator[tuple[StandIn, str]]:
    """The stand-in as Stripe for every app's API key (settings.stripe_api_base; no settings key), and the
    address a webhook receiver listens on (Stripe's deliveries go to <address>/api/v1/apps/{id}/stripe/webhook)."""
    standin = StandIn(api_key="sk_test_h4standin", webhook_secret="whsec_h4_app").start()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), WebhookReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    billow.c.settings = replace(billow.c.settings, stripe_api_base=standin.url)
    yield standin, f"http://127.0.0.1:{receiver.server_address[1]}"
    receiver.shutdown()
    receiver.server_close()
    standin.stop()
