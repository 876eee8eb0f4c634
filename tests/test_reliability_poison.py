"""The poison-proof scenarios of `python -m reliability` (reliability/poison.py) at their CI sizes, on
the real broker and the real Triton: every hostile input dead-lettered with its reason, every valid
one around it processed, no partition stalled over 60 s, every health probe answered within 1 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.local_services import LocalBroker, LocalTriton
from reliability.faults import ScenarioResult, Stack
from reliability.monitor import PROBE_LIMIT_S, STALL_LIMIT_S
from reliability.poison import (
    PoisonSizes,
    poison_images,
    scenario_added_fields,
    scenario_event_times,
    scenario_poison_images,
    scenario_poison_queries,
)


@pytest.fixture
def stack(broker: LocalBroker, triton: LocalTriton, model_repository: Path, tmp_path: Path) -> Stack:
    return Stack(broker, triton, model_repository, tmp_path)


def _checked(result: ScenarioResult) -> ScenarioResult:
    assert result.passed, f"{result.error}\nchecks: {result.checks}\nnotes: {result.notes}"
    assert result.lost == 0
    assert result.longest_stall_s is not None and result.longest_stall_s <= STALL_LIMIT_S
    assert result.probe_max_s is not None and 0 < result.probe_max_s < PROBE_LIMIT_S
    return result


def test_poison_images_beside_valid_upserts_and_another_workers_batches(stack: Stack) -> None:
    result = _checked(scenario_poison_images(stack, PoisonSizes.quick()))
    expected = {reason for _, reason in poison_images().values()}
    assert set(result.dlq_by_reason) == expected
    sent = result.checks["poison_sent"]
    assert sum(result.dlq_by_reason.values()) == sent >= len(poison_images())
    assert result.checks["valid_embedded"].split("/")[0] == result.checks["valid_embedded"].split("/")[1]


def test_poison_query_logs_in_a_valid_stream(stack: Stack) -> None:
    result = _checked(scenario_poison_queries(stack, PoisonSizes.quick()))
    assert sum(result.dlq_by_reason.values()) == result.checks["hostile_sent"] > 0
    assert len(result.dlq_by_reason) >= 5  # many specific reasons, none generic


def test_late_and_early_event_times(stack: Stack) -> None:
    result = _checked(scenario_event_times(stack, PoisonSizes.quick()))
    assert result.dlq_by_reason == {"event_time_out_of_bounds": 20, "late_event": 5}


def test_a_producer_that_adds_fields_loses_nothing(stack: Stack) -> None:
    result = _checked(scenario_added_fields(stack, PoisonSizes.quick()))
    assert result.dlq_by_reason == {}
    assert result.checks["unknown_field_series"] >= 2
