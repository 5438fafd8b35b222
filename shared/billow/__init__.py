"""Billow: usage metering and billing engine (domain core, services, adapters)."""

__version__ = "0.1.0"
