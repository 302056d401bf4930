"""Token buckets per peer: a flood from one peer is refused cheaply, others are served.

Checked before any signature is verified or anything is stored, keyed by a peer ID that Noise
authenticated (or, for gossip, that a verified record names), so a flooding peer spends our
CPU on a dictionary lookup only and cannot exhaust another peer's allowance.
"""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_TRACKED = 100_000  # peers remembered; the least recently seen are forgotten first


class RateLimiter:
    """`allow(key)` is True while `key` stays under `rate` per second, bursting to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return allowed
