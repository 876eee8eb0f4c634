"""Client-side isolation: find the inputs of a batch that Triton fails every time, process the rest.

Triton's models already fail per item (`querylife.serving.execute_isolated`); this is the last resort
for what still fails a whole request: an input that crashes the python stub, keeps the model past
its deadline or trips a check outside the models. Without it such a batch is retried forever and
its partition stalls, with every good event behind it.

When a batch call fails (any Triton error), a *canary* (a tiny request known to be valid) tells
"Triton is away or overloaded" from "this batch is the problem": if the canary fails too, the error
is re-raised as `TritonUnavailable` and the loop backs off without dead-lettering anything. If the
canary answers, the batch is bisected with a short per-try deadline until single inputs remain; an
input is *poison* once it failed `tries` times with the canary answering after each failure. A
deadline is never taken as proof on its own (an overloaded Triton misses deadlines for good inputs
too): only a deadline missed while the canary answers within its own deadline is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from worker.config import TritonSettings
from worker.observability import ISOLATIONS
from worker.triton_client import TritonDeadline, TritonRequestError, TritonUnavailable

log = structlog.get_logger()

T = TypeVar("T")
R = TypeVar("R")

FAILED = "triton_input_failed"
"""Dead-letter reason: Triton failed every request holding this input, while it answered others."""
TIMEOUT = "triton_input_timeout"
"""Dead-letter reason: every request holding this input missed its deadline, while others did not."""


@dataclass(frozen=True)
class Poison:
    """An input Triton failed `tries` times in a row while healthy: dead-letter it with `reason`."""

    reason: str
    message: str


BatchCall = Callable[[Sequence[T], float | None], Sequence[R]]
"""Process items in one request, deadline in seconds (None: the client's own); one result per item."""


class Isolator(Generic[T, R]):
    """Runs a batch call; on failure, bisects it to the inputs that fail every time (see module doc).

    `canary(deadline_s)` must raise on any Triton failure; `try_timeout_s` is the deadline of each
    call once isolating, `tries` how often a single input must fail before it is poison.
    """

    def __init__(
        self, canary: Callable[[float], None], try_timeout_s: float, canary_timeout_s: float, tries: int = 2
    ) -> None:
        if tries < 1 or try_timeout_s <= 0 or canary_timeout_s <= 0:
            raise ValueError(f"bad isolation: tries={tries}, try={try_timeout_s}, canary={canary_timeout_s}")
        self.canary = canary
        self.try_timeout_s = try_timeout_s
        self.canary_timeout_s = canary_timeout_s
        self.tries = tries

    @classmethod
    def from_settings(cls, triton: TritonSettings, canary: Callable[[float], None]) -> Isolator[T, R]:
        """The worker's isolator: `QL_TRITON_ISOLATION_TIMEOUT_S` per try (the canary's too), `_TRIES`."""
        return cls(canary, triton.isolation_timeout_s, triton.isolation_timeout_s, triton.isolation_tries)

    def run(self, items: Sequence[T], call: BatchCall[T, R]) -> list[R | Poison]:
        """One result per item, in order: the call's result, or `Poison` for an input that fails alone."""
        if not items:
            return []
        try:
            return list(call(items, None))
        except (TritonRequestError, TritonUnavailable) as exc:
            self._require_healthy(exc, len(items))
            log.warning("triton_batch_isolating", items=len(items), error=str(exc)[:200])
            return self._bisect(items, call, exc)

    def _bisect(self, items: Sequence[T], call: BatchCall[T, R], first: Exception) -> list[R | Poison]:
        started = time.monotonic()
        results: list[R | Poison | None] = [None] * len(items)
        failures = [0] * len(items)
        todo: deque[list[int]] = deque(_halves(list(range(len(items)))))
        if len(items) == 1:  # the whole batch was this one input: that was its first failure
            failures[0] = 1
            if self.tries == 1:
                results[0], todo = _poison(first, self.tries), deque()
        while todo:
            idx = todo.popleft()
            try:
                out = call([items[i] for i in idx], self.try_timeout_s)
            except (TritonRequestError, TritonUnavailable) as exc:
                if len(idx) > 1:
                    todo.extend(_halves(idx))
                    continue
                self._require_healthy(exc, len(items))
                failures[idx[0]] += 1
                if failures[idx[0]] >= self.tries:
                    results[idx[0]] = _poison(exc, self.tries)
                else:
                    todo.append(idx)
                continue
            for i, result in zip(idx, out, strict=True):
                results[i] = result
        poison = [i for i, r in enumerate(results) if isinstance(r, Poison)]
        ISOLATIONS.labels("poison" if poison else "none_found").inc()
        log.warning(
            "triton_batch_isolated",
            items=len(items),
            poison=len(poison),
            seconds=round(time.monotonic() - started, 2),
        )
        done = [r for r in results if r is not None]
        assert len(done) == len(items), "every input has a result or is poison"
        return done

    def _require_healthy(self, cause: Exception, items: int) -> None:
        """Raise `TritonUnavailable` unless the canary answers: only a healthy Triton convicts inputs."""
        try:
            self.canary(self.canary_timeout_s)
        except (TritonRequestError, TritonUnavailable) as exc:
            ISOLATIONS.labels("triton_unhealthy").inc()
            raise TritonUnavailable(
                f"a batch of {items} failed ({str(cause)[:160]}) and so did the canary ({str(exc)[:160]})"
            ) from cause


def _halves(idx: list[int]) -> list[list[int]]:
    mid = len(idx) // 2
    return [idx[:mid], idx[mid:]] if mid else [idx]


def _poison(exc: Exception, tries: int) -> Poison:
    reason = TIMEOUT if isinstance(exc, TritonDeadline) else FAILED
    return Poison(reason, f"failed {tries} time(s) alone while Triton answered a canary: {str(exc)[:300]}")
