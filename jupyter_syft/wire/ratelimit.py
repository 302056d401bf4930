"""Token buckets per peer: a flood from one peer is refused cheaply, others are served.

Both nodes check them before any signature is verified or anything is stored (the router's
`admit`), keyed by a peer ID that Noise authenticated (or, for the network's gossip, that a
verified record names), so a flooding peer spends our CPU on a dictionary lookup only and
cannot exhaust another peer's allowance. At most `max_tracked` peers are remembered (the least
recently seen are forgotten first, with a full bucket when they come back), so many identities
cannot grow memory without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_TRACKED = 100_000


class RateLimiter:
    """`allow(key)` is True while `key` stays under `rate` per second, bursting to `burst`."""

    def __init__(self, rate: float, burst: float, max_tracked: int = MAX_TRACKED) -> None:
        self.rate = rate
        self.burst = burst
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_tracked:
            self._buckets.popitem(last=False)
        return allowed
