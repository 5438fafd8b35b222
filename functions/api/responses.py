"""Responses the API routes share (the handler's and its routers')."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response

from billow import jsonx
from billow.api.http import JSON


def ok(body: Any, status: int = 200) -> Response:
    return Response(status, JSON, jsonx.dumps(body))


def no_content() -> Response:
    return Response(204, None, "")
