"""Ingestion receipts (Billow, issue 21): GET /api/v1/events/receipts/{id}, the receipt a POST /api/v1/events with
`Prefer: return=representation` answered."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import container
from billow.services import receipts
from billow.web.http import path_param
from functions.api.responses import ok

router = APIGatewayHttpRouter()


@router.get("/api/v1/events/receipts/<rid>")
def get_receipt(rid: str) -> Response:
    c = container()
    return ok(receipts.get_receipt(c.namespace, path_param(rid), meta=c.meta))
