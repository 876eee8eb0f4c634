"""The query worker's embedding state on a real broker: v1 and v2 records side by side in one version's
topic, another version's record refused, and snapshots that either give exactly the state of a cold
load or are discarded."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaAdminClient

from schemas import FusionWeights, ProductEmbedding, ProductEmbeddingV2, encode
from tests.conftest import make_settings
from worker import state_snapshot
from worker.config import Settings
from worker.embedding_state import EmbeddingState
from worker.kafka_io import create_topics, make_producer
from worker.vector_matrix import BLOCK_ROWS, VectorMatrix

DIM = 16
SERVED, OTHER = "qv-served", "qv-other"
NOW = datetime(2026, 12, 3, tzinfo=UTC)


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def v1(pid: str, vector: np.ndarray, version: str = SERVED) -> bytes:
    return encode(
        ProductEmbedding(
            product_id=pid,
            product_type="Tshirts",
            embedding=[float(x) for x in vector],
            has_title=True,
            has_image=True,
            model_version=version,
            source_event_id="e",
            updated_at=NOW,
        )
    )


def v2(
    pid: str,
    vector: np.ndarray,
    version: str = SERVED,
    dtype: str = "float32",
    weights: tuple[float, float] = (0.5, 0.5),
) -> bytes:
    return encode(
        ProductEmbeddingV2.from_array(
            vector,
            dtype=dtype,  # type: ignore[arg-type]
            product_id=pid,
            product_type="Tshirts",
            model_version=version,
            fusion_weights=FusionWeights(title=weights[0], image=weights[1]),
            has_title=True,
            has_image=True,
            source_event_id="e",
            updated_at=NOW,
        )
    )


def send(settings: Settings, records: list[tuple[str, bytes | None]]) -> None:
    producer = make_producer(settings.kafka, linger_ms=20)
    for pid, value in records:
        producer.send(settings.topics.embeddings_for(SERVED), key=pid.encode(), value=value)
    producer.flush(30)
    producer.close()


def loaded(settings: Settings) -> EmbeddingState:
    state = EmbeddingState(settings, DIM, SERVED)
    state.load()
    state.maybe_snapshot()  # a cold load is due at once (the query path calls this between batches)
    return state


def contents(state: EmbeddingState, version: str = SERVED) -> dict[str, np.ndarray]:
    matrix = state.matrix(version)
    ids = sorted(matrix.ids)
    return dict(zip(ids, matrix.rows(ids), strict=True))


# --------------------------------------------------------------------------- the matrix alone


def test_matrix_reuses_freed_rows_and_grows_by_blocks() -> None:
    rng = np.random.default_rng(1)
    m = VectorMatrix(DIM, "float16")
    vectors = {f"p{i}": unit(rng) for i in range(BLOCK_ROWS + 10)}
    for pid, vec in vectors.items():
        m.put(pid, vec)
    assert len(m.blocks) == 2 and len(m) == BLOCK_ROWS + 10
    assert m.delete("p3") and not m.delete("p3") and "p3" not in m
    m.put("new", vectors["p4"])
    assert m.ids["new"] == 3 and len(m.blocks) == 2  # the freed row, no new block
    got = m.rows(["p0", f"p{BLOCK_ROWS + 5}", "new"])
    assert got.dtype == np.float32
    want = np.stack([vectors["p0"], vectors[f"p{BLOCK_ROWS + 5}"], vectors["p4"]])
    assert np.abs(got - want).max() < 1e-3  # float16 storage
    ids, chunks = m.ordered()
    assert "p3" not in ids and len(ids) == len(m)
    assert sum(len(v) for v, _ in chunks) == len(m)


def test_matrix_keeps_fusion_weights_beside_vectors() -> None:
    m = VectorMatrix(DIM, "float16")
    rng = np.random.default_rng(9)
    m.put("a", unit(rng), (0.6, 0.4))
    m.put("v1", unit(rng))  # a v1 record: no weights
    m.put("b", unit(rng), (0.123456789, 0.876543211))
    assert m.fusion_weights(["a", "v1", "b", "absent"]) == {"a": (0.6, 0.4), "b": (0.123457, 0.876543)}
    m.delete("a")
    m.put("c", unit(rng))  # takes a's freed row: a's weights must not leak into it
    assert m.fusion_weights(["a", "c"]) == {}
    m.put("b", unit(rng), (1.0, 0.0))  # an update replaces them
    assert m.fusion_weights(["b"]) == {"b": (1.0, 0.0)}
    assert (m.nbytes, m.weights_nbytes) == (BLOCK_ROWS * DIM * 2, BLOCK_ROWS * 2 * 4)  # float16, 2 float32


# --------------------------------------------------------------------------- on the broker


def test_v1_and_v2_records_mixed_on_one_topic(broker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(broker, model_version=SERVED)
    create_topics(settings)
    rng = np.random.default_rng(2)
    a, b, c, d, e = (unit(rng) for _ in range(5))
    unbalanced = orjson.loads(v2("unbalanced", b))
    unbalanced["fusion_weights"] = {"title": 0.9, "image": 0.9}  # past the fast path's checks too
    send(
        settings,
        [
            ("json", v1("json", a)),
            ("bin32", v2("bin32", b, weights=(0.8, 0.2))),
            ("bin16", v2("bin16", c, dtype="float16", weights=(0.25, 0.75))),
            ("unbalanced", orjson.dumps(unbalanced)),
            ("upgraded", v1("upgraded", a)),
            ("upgraded", v2("upgraded", d)),  # the latest record wins, across schema versions
            ("deleted", v2("deleted", e)),
            ("deleted", None),
            ("moved", v2("moved", e)),
            ("moved", v2("moved", e, version=OTHER)),  # a writer's bug: another version in this topic
            ("wrong-dim", v2("wrong-dim", np.ones(DIM + 1, np.float32))),
        ],
    )
    state = loaded(settings)
    served = contents(state)
    assert sorted(served) == ["bin16", "bin32", "json", "upgraded"]
    np.testing.assert_allclose(served["json"], a, rtol=1e-6)
    np.testing.assert_array_equal(served["bin32"], b)
    assert np.abs(served["bin16"] - c).max() < 1e-3
    np.testing.assert_array_equal(served["upgraded"], d)
    assert state.invalid == 3  # wrong-dim, unbalanced weights, and "moved" (unknown until a valid one)
    weights = state.matrix(SERVED).fusion_weights(served)
    assert weights == {"bin32": (0.8, 0.2), "bin16": (0.25, 0.75), "upgraded": (0.5, 0.5)}  # v1: none
    state.close()


def _fill(settings: Settings, n: int, seed: int) -> list[tuple[str, bytes | None]]:
    rng = np.random.default_rng(seed)
    records: list[tuple[str, bytes | None]] = [
        (f"p{i}", v2(f"p{i}", unit(rng), weights=((i % 11) / 10, 1 - (i % 11) / 10))) for i in range(n)
    ]
    send(settings, records)
    return records


def test_warm_restart_ends_with_exactly_the_cold_state(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(broker, state_dir=tmp_path, model_version=SERVED)
    create_topics(settings)
    _fill(settings, 3000, seed=3)
    first = loaded(settings)  # cold: writes the snapshot
    first.close()
    path = state_snapshot.path_for(tmp_path, settings.topics.embeddings_for(SERVED), SERVED)
    assert path.exists()
    rng = np.random.default_rng(4)
    tail: list[tuple[str, bytes | None]] = [(f"new{i}", v2(f"new{i}", unit(rng))) for i in range(30)]
    tail += [(f"p{i}", None) for i in range(0, 300, 10)]  # deletes
    tail += [(f"p{i}", v2(f"p{i}", unit(rng), weights=(0.9, 0.1))) for i in range(1, 300, 10)]  # updates
    tail += [("p2", v2("p2", unit(rng), version=OTHER))]  # another version: refused, p2 unknown
    send(settings, tail)
    warm = EmbeddingState(settings, DIM, SERVED)
    warm.load()
    cold = EmbeddingState(
        make_settings(broker, model_version=SERVED).model_copy(update={"topics": settings.topics}),
        DIM,
        SERVED,
    )
    cold.load()
    assert warm.reader.topic == cold.reader.topic
    assert warm.restored and not cold.restored
    warm_state, cold_state = contents(warm), contents(cold)
    assert sorted(warm_state) == sorted(cold_state)
    assert len(cold_state) == 3000 + 30 - 30 - 1
    for pid, vec in cold_state.items():
        np.testing.assert_array_equal(warm_state[pid], vec)
    weights = cold.matrix(SERVED).fusion_weights(cold_state)
    assert len(weights) == len(cold_state) and weights["p11"] == (0.9, 0.1) and weights["p3"] == (0.3, 0.7)
    assert warm.matrix(SERVED).fusion_weights(warm_state) == weights
    assert warm.positions == cold.positions
    warm.close()
    cold.close()


def _snapshot_then(settings: Settings, tmp_path: Path) -> Path:
    create_topics(settings)
    _fill(settings, 500, seed=5)
    loaded(settings).close()
    return state_snapshot.path_for(tmp_path, settings.topics.embeddings_for(SERVED), SERVED)


def _restored(settings: Settings) -> tuple[bool, int]:
    state = EmbeddingState(settings, DIM, SERVED)
    try:
        return state._restore(), len(state)
    finally:
        state.close()


def test_truncated_and_corrupt_snapshots_are_discarded(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(broker, state_dir=tmp_path, model_version=SERVED)
    path = _snapshot_then(settings, tmp_path)
    assert _restored(settings) == (True, 500)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert _restored(settings) == (False, 0)
    with pytest.raises(state_snapshot.SnapshotRejected, match="truncated"):
        state_snapshot.read(path, settings.topics.embeddings_for(SERVED), None, DIM, "float32", 1e9)
    corrupt = bytearray(data)
    corrupt[-5] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(state_snapshot.SnapshotRejected, match="corrupt"):
        topic_id = EmbeddingState(settings, DIM, SERVED).reader.topic_id()
        state_snapshot.read(path, settings.topics.embeddings_for(SERVED), topic_id, DIM, "float32", 1e9)
    # a cold load after a discarded snapshot is complete
    state = loaded(settings)
    assert len(state) == 500
    state.close()


def test_expired_snapshot_is_discarded(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(broker, state_dir=tmp_path, model_version=SERVED)
    path = _snapshot_then(settings, tmp_path)
    state = EmbeddingState(settings, DIM, SERVED)
    meta, matrix = state_snapshot.read(
        path, settings.topics.embeddings_for(SERVED), state.reader.topic_id(), DIM, "float32", 1e9
    )
    state.close()
    old = state_snapshot.SnapshotMeta(
        **(vars(meta) | {"created_at": time.time() - 2 * 86_400})  # older than delete.retention.ms (1 d)
    )
    state_snapshot.write(path, old, matrix)
    with pytest.raises(state_snapshot.SnapshotRejected, match="expired"):
        state_snapshot.read(path, meta.topic, meta.topic_id, DIM, "float32", 86_400)
    assert _restored(settings) == (False, 0)


def test_snapshot_without_fusion_weights_is_rebuilt(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A format-1 snapshot (vectors only, before the weights were kept) is refused, not half-used."""
    settings = make_settings(broker, state_dir=tmp_path, model_version=SERVED)
    path = _snapshot_then(settings, tmp_path)
    topic = settings.topics.embeddings_for(SERVED)
    state = EmbeddingState(settings, DIM, SERVED)
    meta, matrix = state_snapshot.read(path, topic, state.reader.topic_id(), DIM, "float32", 1e9)
    state.close()
    state_snapshot.write(path, state_snapshot.SnapshotMeta(**(vars(meta) | {"format": 1})), matrix)
    with pytest.raises(state_snapshot.SnapshotRejected, match="format"):
        state_snapshot.read(path, topic, meta.topic_id, DIM, "float32", 1e9)
    assert _restored(settings) == (False, 0)
    rebuilt = loaded(settings)  # cold, from the topic, and snapshotted again in the new format
    assert rebuilt.matrix(SERVED).fusion_weights(["p3"]) == {"p3": (0.3, 0.7)}
    rebuilt.close()
    assert _restored(settings) == (True, 500)


def test_snapshot_of_a_recreated_topic_is_discarded(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(broker, state_dir=tmp_path, model_version=SERVED)
    path = _snapshot_then(settings, tmp_path)
    assert _restored(settings) == (True, 500)
    admin = KafkaAdminClient(**settings.kafka.common_config())
    try:
        admin.delete_topics([settings.topics.embeddings_for(SERVED)])
    finally:
        admin.close()
    deadline = time.monotonic() + 30
    while True:  # recreate it, refilled past the stored offsets with other products
        try:
            create_topics(settings)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    _fill(settings, 800, seed=6)
    assert path.exists()
    assert _restored(settings) == (False, 0)
    state = loaded(settings)
    assert len(state) == 800  # the new topic's products, nothing of the old one
    state.close()


def test_unknown_products_are_not_waited_for_once_caught_up(broker) -> None:  # type: ignore[no-untyped-def]
    """A product that never got an embedding must not cost every batch the full wait."""
    settings = make_settings(broker, model_version=SERVED)
    create_topics(settings)
    _fill(settings, 200, seed=7)
    state = loaded(settings)
    started = time.monotonic()
    assert state.wait_for({"p1", "never-embedded"}, wait_s=20.0, version=SERVED) == {"never-embedded"}
    assert time.monotonic() - started < 10.0, "waited although the state had reached its end"
    state.close()


def test_a_wait_follows_to_the_end_offsets_and_a_backlog_pays_one_check(broker) -> None:  # type: ignore[no-untyped-def]
    """An embedding written before the query logs is waited for (the state reads to the end it has
    now); once the state was seen at the end after the logs were written, later batches of the same
    backlog do not check again, so an embedding written after those logs is not waited for."""
    settings = make_settings(broker, model_version=SERVED)
    create_topics(settings)
    _fill(settings, 50, seed=8)
    state = loaded(settings)
    rng = np.random.default_rng(9)
    send(settings, [("late", v2("late", unit(rng)))])  # written after the load, before the "logs"
    logs_written_ms = int(time.time() * 1000)
    time.sleep(0.01)  # the check starts in a later millisecond than the logs' CreateTime
    assert state.wait_for({"late", "never"}, 20.0, SERVED, written_before_ms=logs_written_ms) == {"never"}
    send(settings, [("after", v2("after", unit(rng)))])  # written after the backlog's logs
    assert state.wait_for({"after"}, 20.0, SERVED, written_before_ms=logs_written_ms) == {"after"}
    assert "after" not in state.matrix(SERVED)  # not even followed: no check was due
    # a log written after the last check is checked again: the state follows to the end it sees now
    assert state.wait_for({"after"}, 20.0, SERVED, written_before_ms=int(time.time() * 1000) + 1) == set()
    state.close()
