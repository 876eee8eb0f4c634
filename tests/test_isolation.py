"""Client-side isolation (worker/isolation.py): the inputs Triton fails every time are found and
dead-lettered, the rest processed; a slow or absent Triton convicts no input.

The bisect logic is exercised with plain batch functions (the isolator takes any); the canary, the
deadlines and the results come from the real Triton of the session where they matter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from harness.local_services import LocalTriton
from worker.config import TritonSettings
from worker.isolation import FAILED, TIMEOUT, Isolator, Poison
from worker.triton_client import (
    ProductResult,
    RelevanceClient,
    TritonDeadline,
    TritonRequestError,
    TritonUnavailable,
)


class Batches:
    """A batch function whose `poison` inputs fail every request holding them; it keeps a virtual
    clock: a request costs its deadline when it misses it, `ok_s` when it succeeds."""

    def __init__(
        self, poison: set[int], error: type[Exception], default_s: float, ok_s: float = 0.05
    ) -> None:
        self.poison, self.error, self.default_s, self.ok_s = poison, error, default_s, ok_s
        self.calls: list[int] = []
        self.elapsed = 0.0

    def __call__(self, items: Sequence[int], timeout_s: float | None) -> list[int]:
        self.calls.append(len(items))
        if self.poison & set(items):
            self.elapsed += (timeout_s or self.default_s) if self.error is TritonDeadline else self.ok_s
            raise self.error(f"items {sorted(self.poison & set(items))} failed")
        self.elapsed += self.ok_s
        return [10 * i for i in items]

    def canary(self, timeout_s: float) -> None:
        self.elapsed += self.ok_s


@pytest.mark.parametrize(("error", "reason"), [(TritonRequestError, FAILED), (TritonDeadline, TIMEOUT)])
def test_poison_inputs_are_found_and_the_rest_processed(error: type[Exception], reason: str) -> None:
    batches = Batches({7, 40}, error, default_s=10.0)
    isolator: Isolator[int, int] = Isolator(batches.canary, try_timeout_s=4.0, canary_timeout_s=4.0, tries=2)
    results = isolator.run(list(range(64)), batches)
    assert [i for i, r in enumerate(results) if isinstance(r, Poison)] == [7, 40]
    assert {r.reason for r in results if isinstance(r, Poison)} == {reason}
    assert [r for r in results if not isinstance(r, Poison)] == [
        10 * i for i in range(64) if i not in (7, 40)
    ]
    assert batches.calls.count(1) >= 4  # each poison input failed twice alone


def test_a_batch_that_works_is_one_call() -> None:
    batches = Batches(set(), TritonRequestError, default_s=10.0)
    isolator: Isolator[int, int] = Isolator(batches.canary, 4.0, 4.0)
    assert isolator.run(list(range(5)), batches) == [0, 10, 20, 30, 40]
    assert batches.calls == [5]


def test_a_single_input_batch_needs_its_tries() -> None:
    batches = Batches({3}, TritonRequestError, default_s=10.0)
    isolator: Isolator[int, int] = Isolator(batches.canary, 4.0, 4.0, tries=3)
    [result] = isolator.run([3], batches)
    assert isinstance(result, Poison) and result.reason == FAILED
    assert batches.calls == [1, 1, 1]


def test_an_input_that_fails_once_is_not_poison() -> None:
    failed: set[int] = set()

    def flaky(items: Sequence[int], timeout_s: float | None) -> list[int]:
        if 5 in items and 5 not in failed:
            failed.add(5)
            raise TritonDeadline("once")
        return list(items)

    isolator: Isolator[int, int] = Isolator(lambda _t: None, 4.0, 4.0)
    assert isolator.run(list(range(8)), flaky) == list(range(8))


def test_a_failing_canary_convicts_nobody() -> None:
    """Triton slow for everyone (the canary misses its deadline too): back off, no dead letter."""

    def canary(timeout_s: float) -> None:
        raise TritonDeadline("canary missed its deadline")

    batches = Batches({1}, TritonDeadline, default_s=10.0)
    isolator: Isolator[int, int] = Isolator(canary, 4.0, 4.0)
    with pytest.raises(TritonUnavailable, match="canary"):
        isolator.run(list(range(8)), batches)
    assert batches.calls == [8]  # no bisect of a batch while Triton is unhealthy


def test_default_settings_bound_the_stall_behind_a_hanging_input() -> None:
    """The worst case the defaults allow: one input of a full batch misses every deadline."""
    t = TritonSettings()
    batches = Batches({63}, TritonDeadline, default_s=t.timeout_s)
    isolator: Isolator[int, int] = Isolator(
        batches.canary, t.isolation_timeout_s, t.isolation_timeout_s, t.isolation_tries
    )
    results = isolator.run(list(range(64)), batches)
    assert isinstance(results[63], Poison) and sum(isinstance(r, Poison) for r in results) == 1
    assert batches.elapsed <= 45.0, batches.elapsed  # < the 60 s stall goal, with room for the canaries


# --------------------------------------------------------------------------- on the real Triton


def _products(n: int) -> tuple[list[str | None], list[str], list[bytes | None]]:
    return [f"cotton shirt {i}" for i in range(n)], ["Shirts"] * n, [None] * n


def test_isolation_on_triton_gives_the_batch_results_for_the_good_inputs(triton: LocalTriton) -> None:
    titles, types, images = _products(12)
    with RelevanceClient(TritonSettings(url=triton.grpc_url, timeout_s=20)) as client:
        expected = client.product_embeddings(titles, types, images)

        def embed(items: Sequence[int], timeout_s: float | None) -> list[ProductResult]:
            if 5 in items:  # an input that fails every request holding it
                raise TritonRequestError("Triton product_embedding failed: stub crashed")
            c = client if timeout_s is None else client.with_timeout(timeout_s)
            return c.product_embeddings(
                [titles[i] for i in items], [types[i] for i in items], [None] * len(items)
            )

        def canary(timeout_s: float) -> None:
            client.with_timeout(timeout_s).product_embeddings(["canary"], [""], [None])

        isolator: Isolator[int, ProductResult] = Isolator(canary, 4.0, 4.0)
        results = isolator.run(list(range(12)), embed)
    assert isinstance(results[5], Poison) and results[5].reason == FAILED
    for i, (got, want) in enumerate(zip(results, expected, strict=True)):
        if i != 5:
            assert isinstance(got, ProductResult) and got.embedding is not None and want.embedding is not None
            np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5)


def test_an_overloaded_triton_dead_letters_nothing(triton: LocalTriton) -> None:
    """Every request misses a deadline too short for anyone: the batch is Triton's problem, not an input's."""
    titles, types, images = _products(8)
    with RelevanceClient(TritonSettings(url=triton.grpc_url, timeout_s=20)) as client:
        slow = client.with_timeout(1e-4)
        with pytest.raises(TritonDeadline):
            slow.product_embeddings(titles, types, images)

        def embed(items: Sequence[int], timeout_s: float | None) -> list[ProductResult]:
            return slow.product_embeddings(
                [titles[i] for i in items], [types[i] for i in items], [None] * len(items)
            )

        def canary(timeout_s: float) -> None:
            slow.product_embeddings(["canary"], [""], [None])

        isolator: Isolator[int, ProductResult] = Isolator(canary, 4.0, 4.0)
        with pytest.raises(TritonUnavailable, match="canary"):
            isolator.run(list(range(8)), embed)
        # the client itself is unchanged by `with_timeout`: the same batch works at its own deadline
        assert all(r.embedding is not None for r in client.product_embeddings(titles, types, images))
