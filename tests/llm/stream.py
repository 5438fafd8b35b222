"""A deterministic LLM usage stream (several providers and models, cached tokens, customer/team dimensions)
and its cost computed independently, event by event, with genai-prices' own calc API."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

# (provider, model, uses prompt caching, writes the cache)
MODELS = [
    ("openai", "gpt-4o", True, False),
    ("openai", "gpt-4o-mini", True, False),
    ("anthropic", "claude-3-5-haiku-latest", True, True),
    ("google", "gemini-2.5-pro", True, False),  # tiered above 200k input tokens; the stream stays below
    ("mistral", "mistral-large-latest", False, False),
]
SUBJECTS = ["acme", "globex"]
TEAMS = ["search", "support"]
START = datetime(2026, 3, 1, tzinfo=UTC)


def llm_event(i: int, provider: str, model: str, at: datetime, *, subject: str = "acme", input_tokens: int = 1000,
              output_tokens: int = 100, cached: int = 0, cache_write: int = 0, **dims: str) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"llm-{i}", "source": "tests", "type": "llm", "subject": subject,
            "time": at.isoformat().replace("+00:00", "Z"),
            "data": {"provider": provider, "model": model, "input_tokens": input_tokens, "output_tokens": output_tokens,
                     "cached_input_tokens": cached, "cache_write_tokens": cache_write, **dims}}


def stream(n: int = 150, seed: int = 8) -> list[dict[str, Any]]:
    """n events over three UTC days (2026-03-01..03)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        provider, model, caches, writes = MODELS[i % len(MODELS)]
        subject = SUBJECTS[rnd.randrange(2)]
        input_tokens = rnd.randrange(50, 150_000)
        cached = rnd.randrange(0, input_tokens // 2) if caches and rnd.random() < 0.6 else 0
        cache_write = rnd.randrange(0, input_tokens // 4) if writes and rnd.random() < 0.5 else 0
        at = START + timedelta(seconds=rnd.randrange(3 * 86400), milliseconds=rnd.randrange(1000))
        out.append(llm_event(i, provider, model, at, subject=subject, input_tokens=input_tokens,
                             output_tokens=rnd.randrange(1, 8000), cached=cached, cache_write=cache_write,
                             customer=subject, team=TEAMS[rnd.randrange(2)]))
    return out


def genai_cost(ev: dict[str, Any]) -> Decimal:
    """One event's cost from genai-prices' calc API at the event's time (its bundled table)."""
    from genai_prices import Usage, calc_price

    d = ev["data"]
    usage = Usage(input_tokens=d["input_tokens"], output_tokens=d["output_tokens"],
                  cache_read_tokens=d["cached_input_tokens"], cache_write_tokens=d["cache_write_tokens"])
    at = datetime.fromisoformat(ev["time"].replace("Z", "+00:00"))
    return calc_price(usage, d["model"], provider_id=d["provider"], genai_request_timestamp=at).total_price


def expected_by(events: list[dict[str, Any]], *keys: str) -> dict[tuple[str, ...], Decimal]:
    """Sum of genai-prices' per-event costs by data keys."""
    out: dict[tuple[str, ...], Decimal] = defaultdict(Decimal)
    for ev in events:
        out[tuple(ev["data"][k] for k in keys)] += genai_cost(ev)
    return dict(out)


def tokens_by_model(events: list[dict[str, Any]], model: str) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for ev in events:
        if ev["data"]["model"] == model:
            for k in ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens"):
                sums[k] += ev["data"][k]
    return dict(sums)
