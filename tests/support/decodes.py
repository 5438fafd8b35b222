"""Counting how a request body is decoded: a JSON document (jsonx.loads) and the full validator (parse_event), so a
test can show that a body of common events took the fast path (decode_common) and neither."""

from __future__ import annotations

from typing import Any

import pytest


def count_full_decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """From now on, counts of jsonx.loads on request bodies and of parse_event calls (the dict is updated in place)."""
    from billow import jsonx
    from billow.domain import events as events_mod

    calls = {"loads": 0, "parse_event": 0}
    real_loads, real_parse = jsonx.loads, events_mod.parse_event

    def loads(text: Any) -> Any:
        calls["loads"] += "specversion" in str(text)  # a request body (not, e.g., a meter's stored groupBy)
        return real_loads(text)

    def parse(*a: Any) -> Any:
        calls["parse_event"] += 1
        return real_parse(*a)

    monkeypatch.setattr(jsonx, "loads", loads)
    monkeypatch.setattr(events_mod, "parse_event", parse)
    return calls
