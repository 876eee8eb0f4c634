"""The one backoff of the worker: capped exponential delays, optionally jittered.

Every retry loop (a dependency at start, Triton calls, a batch while a dependency is away, polls and
publishes while the broker is away, deferred take-overs) asks a `Backoff` how long to wait next and
resets it once the retried thing worked; the caps are settings (`QL_WORKER_RETRY_MAX_S`,
`QL_WORKER_STARTUP_RETRY_MAX_S`, `QL_TRITON_RETRY_MAX_S`).
"""

from __future__ import annotations

import random

FIRST_RETRY_S = 0.5
"""First wait of the Kafka-side retries (broker away, take-over failed, dependency missing at start)."""


class Backoff:
    """`next()` is the delay to wait now, `initial` doubling (`factor`) up to `cap`; `reset()` starts over.

    `jitter=0.2` spreads each delay uniformly over ±20 % (after the cap), so that workers which failed
    together do not retry in step.
    """

    def __init__(self, initial: float, cap: float, factor: float = 2.0, jitter: float = 0.0) -> None:
        if initial < 0 or cap < 0 or factor < 1 or not 0 <= jitter < 1:
            raise ValueError(f"bad backoff: initial={initial}, cap={cap}, factor={factor}, jitter={jitter}")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._delay = min(initial, cap)

    def next(self) -> float:
        delay = self._delay
        self._delay = min(delay * self.factor, self.cap)
        if self.jitter:
            delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return delay

    def reset(self) -> None:
        self._delay = min(self.initial, self.cap)
