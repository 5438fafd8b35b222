"""Billow SDK for Python: ingest CloudEvents (single, batch, client-side batching with retries), query meters,
check entitlements, create portal tokens. Standard library only."""

from billow_sdk.batcher import Batcher
from billow_sdk.client import BillowError, Client

__all__ = ["Batcher", "BillowError", "Client"]
__version__ = "0.1.0"
