"""Exact decimal arithmetic. Python's default context keeps 28 digits and rounds silently past that;
usage values have up to 38 and sums more, so every Decimal operation that could round runs here, where
rounding raises instead of happening."""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

EXACT = decimal.Context(prec=120, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation, decimal.DivisionByZero])


def exact(op: Callable[..., Decimal], *args: Any) -> Decimal:
    """Run a Decimal method or function in the exact context, e.g. exact(value.normalize)."""
    with decimal.localcontext(EXACT):
        return op(*args)


def exact_sum(values: Iterable[Decimal]) -> Decimal:
    with decimal.localcontext(EXACT):
        return sum(values, Decimal(0))
