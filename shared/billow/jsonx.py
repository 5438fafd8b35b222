"""Exact JSON: numbers with a fraction or exponent are read as Decimal and written back digit for digit.

The standard library and orjson both read `0.1` as a binary float; a billing engine must not.
simplejson's C scanner does the Decimal round trip, so one module serves ingest and responses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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


# JSON lets a string hold a lone UTF-16 surrogate ("\ud800"); Python decodes it into a str no UTF-8 codec (SQLite,
# PostgreSQL, Kafka, the HTTP response) can encode. The first pattern finds a lone one's escape cheaply in the
# request text (a high escape not followed by a low one, or a low one not after a high one; pairs, as ASCII-only
# encoders write emoji, do not match); the walk over the decoded document then says exactly where.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                               r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_raw_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")  # strict UTF-8 encodes every code point but a surrogate
    except UnicodeEncodeError:
        return bool(_SURROGATE.search(text))
    return False


def lone_surrogates(text: str, doc: Any, limit: int = 100) -> list[str]:
    """Paths (e.g. `[3].data.model`, `groupBy.\\ud800` for a key) of the strings and keys of `doc`, decoded from
    `text`, that hold a lone surrogate; a pair (\\ud83d\\ude00) is one character and fine. At most `limit`."""
    if ("\\u" not in text or not _SURROGATE_ESCAPE.search(text)) and not _has_raw_surrogate(text):
        return []  # the common body (no \u escape, valid UTF-8 text): no regex pass over it (ingest: 10k events)
    return _paths(doc, lambda s: _SURROGATE.search(s) is not None, limit)


def nul_characters(text: str, doc: Any, limit: int = 100) -> list[str]:
    """Paths of the strings and keys of `doc`, decoded from `text`, that hold a NUL (U+0000), which PostgreSQL
    cannot store in text. JSON text can only write one as the escape `\\u0000` (a raw control character in a string
    is malformed JSON), so a body without that escape is answered without a walk."""
    if "\\u0000" not in text:
        return []
    return _paths(doc, lambda s: "\x00" in s, limit)


def _paths(doc: Any, holds: Callable[[str], bool], limit: int) -> list[str]:
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(doc, "")]  # a loop, not recursion: the body may nest thousands deep
    while stack and len(found) < limit:
        node, path = stack.pop()
        if isinstance(node, str):
            if holds(node):
                found.append(path)
        elif isinstance(node, dict):
            children = []
            for key, value in node.items():
                shown = key.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")
                sub = f"{path}.{shown}" if path else shown
                if holds(key):
                    found.append(sub)
                children.append((value, sub))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend(reversed([(value, f"{path}[{i}]") for i, value in enumerate(node)]))
    return found[:limit]


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
