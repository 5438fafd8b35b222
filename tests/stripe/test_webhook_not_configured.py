"""Stripe's webhook on a Billow with no Stripe app set up (no webhook secret): a 404 problem naming the setting,
not a 500 (the fuzz suite found the 500 once the route entered the served document)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("no-stripe")).start()
    yield srv
    srv.stop()


def test_webhook_without_a_secret_is_404_not_500(server: Server) -> None:
    status, headers, body = server.request("POST", "/api/v1/apps/stripe/webhook", {"type": "invoice.paid"},
                                           headers={"Stripe-Signature": "t=1,v1=00"})
    assert status == 404 and headers["Content-Type"] == "application/problem+json", (status, body)
    assert body["status"] == 404 and "stripe_webhook_secret" in body["detail"]
