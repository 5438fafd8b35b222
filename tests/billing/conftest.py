"""Billing through the real handlers with a moving clock (tests/entitlements' harness: in-memory twin and chdb,
SQLite meta store)."""

from tests.entitlements.conftest import Billow, Clock, billow

__all__ = ["Billow", "Clock", "billow"]
