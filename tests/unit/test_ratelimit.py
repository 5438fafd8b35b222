"""Token buckets: a burst, then the rate, and the wait a 429 should announce."""

from __future__ import annotations

import pytest

from billow.services.ratelimit import TokenBuckets


def test_burst_then_rate_and_retry_after() -> None:
    now = [0.0]
    tb = TokenBuckets(rate=2, burst=4, clock=lambda: now[0])
    assert [tb.take("k") for _ in range(4)] == [0, 0, 0, 0]
    assert tb.take("k") == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert tb.take("other") == 0  # buckets are per key
    now[0] += 0.5
    assert tb.take("k") == 0 and tb.take("k") > 0
    now[0] += 100
    # Refills only up to the burst: four go, the fifth waits for the next token.
    assert [tb.take("k") for _ in range(5)] == [0, 0, 0, 0, pytest.approx(0.5)]
