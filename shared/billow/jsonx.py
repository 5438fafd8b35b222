"""Exact JSON: numbers with a fraction or exponent are read as Decimal and written back digit for digit.

The standard library and orjson both read `0.1` as a binary float; a billing engine must not.
simplejson's C scanner does the Decimal round trip, so one module serves ingest and responses.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import simplejson

from billow.exact import exact

_decoder = simplejson.JSONDecoder(parse_float=Decimal)


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        from billow.timeutil import format_rfc3339

        return format_rfc3339(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


_encoder = simplejson.JSONEncoder(use_decimal=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    return _decoder.decode(text)


def dumps(obj: Any) -> str:
    return _encoder.encode(obj)


def plain_decimal(value: Decimal) -> Decimal:
    """A Decimal without trailing zeros or exponent form, e.g. 3.500000000000000000 -> 3.5, 1E+2 -> 100."""
    if value == 0:
        return Decimal(0)
    normal = exact(value.normalize)
    sign, digits, exponent = normal.as_tuple()
    if isinstance(exponent, int) and exponent > 0:
        return exact(normal.quantize, Decimal(1))
    return normal


JSONDecodeError = simplejson.JSONDecodeError
