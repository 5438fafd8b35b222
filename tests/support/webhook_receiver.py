"""API Gateway in front of the Stripe webhook Lambda, for tests whose Stripe stand-in delivers webhooks over HTTP."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

from billow.local.server import apigw_event
from functions.stripe_webhook.handler import lambda_handler as webhook


class WebhookReceiver(BaseHTTPRequestHandler):
    """The HTTP request becomes a payload 2.0 event for the webhook Lambda; its answer goes back as is."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out = webhook(apigw_event("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                  "127.0.0.1"), None)
        data = out["body"].encode()
        self.send_response(out["statusCode"])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
