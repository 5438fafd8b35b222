"""Responses the API routes share (the handler's and its routers')."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response

from billow import jsonx
from billow.web.http import JSON


def ok(body: Any, status: int = 200) -> Response:
    return Response(status, JSON, jsonx.dumps(body))


def no_content() -> Response:
    return Response(204, None, "")


def origin(event: dict[str, Any]) -> str:
    """The scheme and host the client called (for absolute links back to this API); "" when unknown."""
    headers = event.get("headers") or {}
    host = headers.get("host") or (event.get("requestContext") or {}).get("domainName")
    return f"{headers.get('x-forwarded-proto') or 'http'}://{host}" if host else ""


def document(body: bytes, content_type: str, filename: str) -> Response:
    """An invoice document's bytes, offered as a download under its file name."""
    return Response(200, content_type, body, headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store", "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})
