"""Reliability and hostile input, on the real broker and the real Triton (the session fixtures).

The fast subset (CI) runs every scenario at small sizes: the corpus checks offline, the whole hostile
corpus through a worker, three kill -9 of a worker mid-stream, a kill -9 and restart of Triton, a
broker absent at start, a kill -9 and restart of a durable broker, a consumer group losing a member,
and a secrets-in-logs check. The full run (`python -m reliability`, or this file with
QL_RELIABILITY_FULL=1 / `-m slow`) runs every fault scenario at the larger sizes.
See docs/reliability.md."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from harness.local_services import LocalBroker, LocalTriton
from reliability.faults import (
    ALL_FAULTS,
    ScenarioResult,
    Sizes,
    Stack,
    WorkerProcess,
    fresh_settings,
    scenario_broker_late,
    scenario_broker_restart,
    scenario_group_member_kill,
    scenario_triton_kill,
    scenario_worker_kill,
)
from reliability.hostile import ANY, QUERY, HostileSizes, corpus, prepare_image_root, scenario_hostile
from schemas import EventError, ProductUpsert, QueryLog, decode_event
from worker.config import KafkaSettings
from worker.images import resolve_image

PRODUCTS = ["1163", "1164", "1165"]
# decodable images that only Triton's decoder can refuse (the schema sees valid magic bytes)
TRITON_LEVEL = {
    "corrupt JPEG (magic + noise)",
    "truncated JPEG",
    "truncated PNG",
    "corrupt PNG chunk",
    "WEBP magic + garbage",
    "decompression bomb 20000x20000",
    "decompression bomb 5000x5000",
    "animated PNG",
    "corrupt PNG file",
}


def _full_requested(config: pytest.Config) -> bool:
    markexpr = str(config.getoption("markexpr") or "")
    return os.environ.get("QL_RELIABILITY_FULL") == "1" or ("slow" in markexpr and "not slow" not in markexpr)


@pytest.fixture
def stack(broker: LocalBroker, triton: LocalTriton, model_repository: Path, tmp_path: Path) -> Stack:
    return Stack(broker, triton, model_repository, tmp_path)


def _explain(result: ScenarioResult) -> str:
    return f"{result.error}\nchecks: {result.checks}\nnotes: {result.notes}"


# --------------------------------------------------------------------------- offline: the corpus itself


def test_corpus_is_deterministic_large_and_hostile(tmp_path: Path) -> None:
    cases = corpus(PRODUCTS, HostileSizes.quick().per_family)
    again = corpus(PRODUCTS, HostileSizes.quick().per_family)
    assert [c.value for c in cases] == [c.value for c in again]
    assert len(cases) >= 1000
    root = tmp_path / "images"
    prepare_image_root(root)
    passed_schema = set()
    for case in cases:
        model = QueryLog if case.path == QUERY else ProductUpsert
        try:
            event = decode_event(model, case.value)
            if isinstance(event, ProductUpsert) and event.image is not None:
                resolve_image(event.image, root)
        except EventError as exc:
            assert not case.accepted, f"{case.category}: valid under the compatibility policy ({exc})"
            assert not case.reported, (
                f"{case.category}: a valid log naming unknown products was rejected ({exc.reason})"
            )
            assert exc.reason, case.category
            assert ANY in case.expect or exc.reason in case.expect, (case.category, exc.reason, case.expect)
            continue
        if case.accepted:
            assert isinstance(event, QueryLog) and event.unknown_fields(), case.category
        elif not case.reported:
            passed_schema.add(case.category)
    accepted = [c for c in cases if c.accepted]
    assert len(accepted) >= 50 and any(c.category == "unknown fields" for c in accepted)
    # only the image cases that need a real decoder get past the schema and the path checks
    assert passed_schema <= TRITON_LEVEL, passed_schema - TRITON_LEVEL


# --------------------------------------------------------------------------- on the real services


def test_hostile_corpus_is_dead_lettered_worker_stays_healthy(stack: Stack) -> None:
    result = scenario_hostile(stack, HostileSizes.quick())
    assert result.passed, _explain(result)
    assert result.events_sent >= 1000
    assert result.lost == 0
    # every one dead-lettered, except the valid logs with unknown fields, which are scored instead
    scored, accepted = (int(n) for n in result.checks["accepted_and_scored"].split("/"))
    assert scored == accepted >= 50
    assert sum(result.dlq_by_reason.values()) == result.events_sent - accepted
    # valid logs naming unknown products: a letter, and an `unknown_product` score per missing product
    assert result.dlq_by_reason["unknown_product"] == result.reported > 0
    assert {"path_traversal", "url_not_allowed", "decompression_bomb", "too_large"} <= set(
        result.dlq_by_reason
    )


def test_worker_kill9_mid_stream_loses_nothing(stack: Stack) -> None:
    sizes = Sizes(kill_events=500, kills=3, triton_events=0, group_events=0, broker_events=0, rate=150)
    result = scenario_worker_kill(stack, sizes)
    assert result.passed, _explain(result)
    assert result.restarts_survived == 3
    assert result.lost == 0 and result.duplicated == result.duplicated_identical


def test_broker_killed_and_restarted_loses_nothing(stack: Stack) -> None:
    """kill -9 the (durable) broker mid-stream: the same worker process waits, resumes, loses nothing."""
    sizes = Sizes(
        kill_events=0, kills=0, triton_events=0, group_events=0, broker_events=0, rate=150, restart_events=200
    )
    result = scenario_broker_restart(stack, sizes)
    assert result.passed, _explain(result)
    assert result.lost == 0 and result.events_sent == 200
    assert result.checks["process_starts"] == 1
    assert result.checks["alive_while_down"] is True
    assert result.checks["committed_before_kill"] >= 50


def test_triton_killed_and_restarted_commits_nothing_meanwhile(stack: Stack) -> None:
    """Restarts the session Triton on its own ports (the tests after this one use it again)."""
    sizes = Sizes(kill_events=0, kills=0, triton_events=300, group_events=0, broker_events=0, rate=100)
    result = scenario_triton_kill(stack, sizes)
    assert result.passed, _explain(result)
    assert result.checks["commits_frozen_while_down"] is True
    assert result.checks["lag_while_down"] > 0
    assert result.checks["worker_pid_unchanged"] is True


def test_broker_absent_at_start_worker_retries_then_processes(stack: Stack) -> None:
    sizes = Sizes(kill_events=0, kills=0, triton_events=0, group_events=0, broker_events=150, rate=100)
    result = scenario_broker_late(stack, sizes)
    assert result.passed, _explain(result)
    assert result.checks["retries_logged_before_broker"] >= 1
    assert result.checks["process_starts"] == 1


def test_group_member_killed_survivor_takes_over(stack: Stack) -> None:
    sizes = Sizes(kill_events=0, kills=0, triton_events=0, group_events=300, broker_events=0, rate=100)
    result = scenario_group_member_kill(stack, sizes)
    assert result.passed, _explain(result)


def test_kafka_password_never_logged(broker: LocalBroker, triton: LocalTriton, tmp_path: Path) -> None:
    """SASL settings pass through to kafka-python, and the password value appears in no log line."""
    secret = "s3cr3t-" + os.urandom(6).hex()
    settings = fresh_settings(broker.bootstrap, triton.grpc_url)
    kafka = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_plain_password=secret
    )
    assert secret not in repr(kafka) and secret not in str(kafka.model_dump())
    assert secret not in kafka.model_dump_json()
    assert kafka.common_config()["sasl_plain_password"] == secret  # only the client gets the value
    env = {
        "QL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "QL_KAFKA_SASL_MECHANISM": "PLAIN",
        "QL_KAFKA_SASL_PLAIN_USERNAME": "svc-querylife",
        "QL_KAFKA_SASL_PLAIN_PASSWORD": secret,
        "QL_KAFKA_REQUEST_TIMEOUT_MS": "3000",
    }
    w = WorkerProcess(settings, "query", tmp_path, "secret", extra_env=env).start()
    try:
        # Tansu speaks no SASL: the worker must fail its Kafka connection, log it, and keep retrying
        deadline = time.monotonic() + 60
        while w.count("dependency_unavailable") < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert w.alive()
    finally:
        assert w.proc is not None
        w.proc.signal(signal.SIGTERM)
        w.stop()
    text = w.log()
    assert secret not in text
    assert w.count("worker_starting") == 1


# --------------------------------------------------------------------------- the full run (slow)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALL_FAULTS))
def test_full_fault_scenarios(request: pytest.FixtureRequest, stack: Stack, name: str) -> None:
    """Full sizes, one scenario per test; the Triton kill restarts the session Triton on its ports."""
    if not _full_requested(request.config):
        pytest.skip("full reliability run: set QL_RELIABILITY_FULL=1 or pass -m slow")
    result = ALL_FAULTS[name](stack, Sizes.full())
    assert result.passed, _explain(result)
