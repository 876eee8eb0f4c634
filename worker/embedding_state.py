"""Every product's embedding of one model version, rebuilt from that version's topic and kept current.

Each query worker holds the whole table, like a global table in a stream processor. It reads the
topic `<product_embeddings>.<version>` from the beginning, or from a local snapshot's offsets when
`QL_WORKER_STATE_DIR` holds a usable one (`worker.state_snapshot`). After that it follows the topic.
The topic is compacted by `product_id` and belongs to one version (docs/contracts.md), so a record of
another version in it is a writer's bug: refused (`model_version_mismatch`), and the product is
unknown until a valid record arrives. A query is only ever scored against its own version's state.

Decoding is the start-up cost at a million products. v2 records (binary vectors) therefore take a
fast path, with the checks of `ProductEmbeddingV2` done directly on the parsed JSON: ~10 µs instead
of ~28 µs per record. Anything else goes through pydantic, which names the reason for rejecting it.
Each product's fusion weights (title, image) are kept beside its vector (`VectorMatrix.fusion_weights`):
`QueryScores` and score replies carry them; a v1 record has none.
"""

from __future__ import annotations

import binascii
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import structlog
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from schemas import EventError, ProductEmbeddingV2, decode_product_embedding
from schemas.base import MODEL_VERSION_PATTERN
from schemas.embeddings import MAX_DIM, VECTOR_DTYPES, embedding_array
from worker import state_snapshot
from worker.config import Settings
from worker.kafka_io import topic_config
from worker.observability import (
    STATE_BYTES,
    STATE_LOAD_PROGRESS,
    STATE_PRODUCTS,
    STATE_RECORDS_LOADED,
    STATE_REJECTED,
    STATE_SNAPSHOTS,
)
from worker.state_reader import TopicReader
from worker.vector_matrix import VectorMatrix, Weights

log = structlog.get_logger()

_MODEL_VERSION = re.compile(MODEL_VERSION_PATTERN)
DEFAULT_DELETE_RETENTION_MS = 86_400_000  # Kafka's default delete.retention.ms (1 day)


class EmbeddingState:
    """Product vectors of one model version, by product id, from that version's own topic.

    A worker serving a version and shadowing another holds one state per version: the two never
    share a matrix, so no score can pair one version's query with the other's products.
    """

    def __init__(self, settings: Settings, dim: int, version: str) -> None:
        self.settings = settings
        self.dim = dim
        self.version = version
        self.matrices = {version: VectorMatrix(dim, settings.worker.state_dtype)}
        self.reader = TopicReader(settings.kafka, settings.topics.embeddings_for(version))
        self.positions: dict[int, int] = {}  # next offset to apply, per partition
        self.invalid = 0
        self.changes = 0  # records applied so far: whether the catalogue moved since a point in time
        self.restored = False  # whether the last load started from a snapshot
        self._snapshot_at = time.monotonic()
        self._caught_up_at_ms = 0  # wall clock (ms) at which the state was last seen reaching the end

    # ------------------------------------------------------------------ reading
    def matrix(self, version: str) -> VectorMatrix:
        return self.matrices[version]

    def __len__(self) -> int:
        return sum(len(m) for m in self.matrices.values())

    def load(self, beat: Callable[[], None] = lambda: None) -> int:
        """Restore a snapshot if one is usable, then read the topic to its current end."""
        started = time.monotonic()
        self.restored = restored = self._restore()
        if restored:
            self.reader.seek(self.positions)

        counted = 0

        def progress(applied: int, share: float) -> None:
            nonlocal counted
            STATE_RECORDS_LOADED.inc(applied - counted)
            counted = applied
            beat()
            STATE_LOAD_PROGRESS.set(share)
            elapsed = max(1e-6, time.monotonic() - started)
            log.info(
                "embedding_state_loading",
                records=applied,
                records_per_s=round(applied / elapsed),
                share=round(share, 4),
                products=len(self),
            )

        applied = self.reader.read_to_end(self._apply, self.settings.worker.state_stall_s, progress)
        self._publish_sizes()
        log.info(
            "embedding_state_loaded",
            products=len(self),
            from_snapshot=restored,
            tail_records=applied,
            seconds=round(time.monotonic() - started, 2),
            versions={v: len(m) for v, m in self.matrices.items()},
        )
        # a cold load is snapshotted at the first chance (between batches, not before ready); a warm
        # one at the usual interval
        self._snapshot_at = time.monotonic() - (0 if restored else float("inf"))
        return len(self)

    def follow(self, timeout_ms: int = 0) -> int:
        """Apply what has arrived (waiting up to `timeout_ms` for something); returns how many."""
        applied = self.reader.follow(self._apply, timeout_ms)
        if applied:
            STATE_RECORDS_LOADED.inc(applied)
            self._publish_sizes()
        return applied

    def wait_for(
        self, product_ids: set[str], wait_s: float, version: str, written_before_ms: int | None = None
    ) -> set[str]:
        """The ids still unknown in `version` after following the state while it is behind (<= `wait_s`).

        A product with no embedding is waited for only while the reader is behind the end offsets
        the topic has now: once it has reached them, waiting cannot help (deleted products, failed
        images, products never embedded), and a batch naming one must not pay `wait_s` every time.
        `written_before_ms` (the newest input's CreateTime): if the state was already seen at the end
        after that, every embedding written before the inputs is applied, and nothing is waited for
        (a backlog pays one check, not one per batch).
        """
        matrix = self.matrices[version]
        missing = {pid for pid in product_ids if pid not in matrix}
        if not missing or (written_before_ms is not None and written_before_ms < self._caught_up_at_ms):
            return missing
        checked_at_ms = int(time.time() * 1000)
        end = self.reader.end_offsets()
        deadline = time.monotonic() + wait_s
        while missing and time.monotonic() < deadline:
            # one fetch round trip at least (fetch_max_wait_ms): it also brings the high watermarks,
            # which `reached` takes when higher (Tansu's ListOffsets can be one batch short)
            self.follow(timeout_ms=50)
            missing = {pid for pid in missing if pid not in matrix}
            if self.reader.reached(end):
                self._caught_up_at_ms = checked_at_ms
                break  # caught up: waiting longer cannot bring an embedding nobody has written
        # following may also have removed products known at the start (tombstones, rejected records)
        return {pid for pid in product_ids if pid not in matrix}

    def close(self) -> None:
        self.reader.close()

    # ------------------------------------------------------------------ applying one record
    def _apply(self, rec: ConsumerRecord) -> None:
        self.positions[rec.partition] = rec.offset + 1
        self.changes += 1
        key = rec.key.decode("utf-8", "replace") if rec.key else None
        if key is None:
            self._reject(None, "missing_key")
            return
        if rec.value is None:
            self._drop(key)  # tombstone: product deleted
            return
        try:
            version, vector, weights = self._decode(rec.value)
        except EventError as exc:
            self._drop(key)  # the latest record is unusable: the product is unknown until a valid one
            self._reject(key, exc.reason)
            return
        if vector.shape[0] != self.dim:
            self._drop(key)
            self._reject(key, "embedding_dim", dim=vector.shape[0], expected=self.dim)
            return
        matrix = self.matrices.get(version)
        if matrix is None:  # a writer bug: this topic belongs to one version only
            self._drop(key)
            self._reject(key, "model_version_mismatch", version=version, expected=self.version)
            return
        matrix.put(key, vector, weights)

    def _decode(self, value: bytes) -> tuple[str, np.ndarray, Weights | None]:
        fast = _fast_v2(value)
        if fast is not None:
            return fast
        record = decode_product_embedding(value)  # the slow path names the reason when it fails
        weights = None
        if isinstance(record, ProductEmbeddingV2):
            weights = (record.fusion_weights.title, record.fusion_weights.image)
        return record.model_version, embedding_array(record), weights

    def _drop(self, key: str) -> None:
        for matrix in self.matrices.values():
            matrix.delete(key)

    def _reject(self, key: str | None, reason: str, **detail: object) -> None:
        self.invalid += 1
        STATE_REJECTED.labels(reason).inc()
        log.warning("invalid_state_record", key=key, reason=reason, **detail)

    def _publish_sizes(self) -> None:
        STATE_PRODUCTS.set(len(self))
        for version, matrix in self.matrices.items():
            STATE_BYTES.labels(version).set(matrix.nbytes)

    # ------------------------------------------------------------------ snapshots
    def maybe_snapshot(self) -> None:
        """Write a snapshot when the interval has passed (called between batches, so it is consistent)."""
        worker = self.settings.worker
        if (
            worker.state_dir is not None
            and time.monotonic() - self._snapshot_at >= worker.state_snapshot_interval_s
        ):
            self.snapshot()

    def snapshot(self) -> None:
        """Write every version's snapshot at the current positions (atomically, one file each)."""
        state_dir = self.settings.worker.state_dir
        topic_id = self.reader.topic_id()
        self._snapshot_at = time.monotonic()
        if state_dir is None or topic_id is None:
            return
        started = time.monotonic()
        positions = self.reader.positions()  # == self.positions once caught up; covers empty partitions
        for version, matrix in self.matrices.items():
            meta = state_snapshot.SnapshotMeta(
                topic=self.reader.topic,
                topic_id=topic_id,
                model_version=version,
                dim=self.dim,
                dtype=self.settings.worker.state_dtype,
                offsets=positions,
                created_at=time.time(),
            )
            path = state_snapshot.path_for(state_dir, self.reader.topic, version)
            written = state_snapshot.write(path, meta, matrix)
            STATE_SNAPSHOTS.labels("written").inc()
            log.info(
                "state_snapshot_written",
                path=str(path),
                products=written.rows,
                mbytes=round((written.ids_bytes + written.vectors_bytes + written.weights_bytes) / 2**20, 1),
                seconds=round(time.monotonic() - started, 2),
            )

    def _restore(self) -> bool:
        """Load every version's snapshot; all or none (they must stand at the same offsets)."""
        state_dir = self.settings.worker.state_dir
        if state_dir is None:
            return False
        topic_id = self.reader.topic_id()
        max_age_s = self._delete_retention_ms() / 1000.0
        loaded: dict[str, VectorMatrix] = {}
        offsets: list[dict[int, int]] = []
        for version in self.matrices:
            path = state_snapshot.path_for(state_dir, self.reader.topic, version)
            try:
                meta, matrix = state_snapshot.read(
                    path, self.reader.topic, topic_id, self.dim, self.settings.worker.state_dtype, max_age_s
                )
            except state_snapshot.SnapshotRejected as exc:
                return self._discard(path, exc.reason, str(exc))
            except OSError as exc:
                return self._discard(path, "unreadable", f"{type(exc).__name__}: {exc}")
            loaded[version], offsets = matrix, [*offsets, meta.offsets]
        if any(o != offsets[0] for o in offsets):
            return self._discard(Path(state_dir), "inconsistent", "versions stand at different offsets")
        if not self._offsets_exist(offsets[0]):
            return self._discard(Path(state_dir), "offsets_gone", "the topic no longer holds those offsets")
        self.matrices, self.positions = loaded, dict(offsets[0])
        STATE_SNAPSHOTS.labels("restored").inc()
        log.info("state_snapshot_restored", products=len(self), offsets=self.positions)
        return True

    def _offsets_exist(self, offsets: dict[int, int]) -> bool:
        """No stored offset lies before its partition's log start (records we never saw are gone).

        No upper check: a topic recreated and refilled is caught by its topic id, and some brokers
        (Tansu) report end offsets one batch low.
        """
        begin = self.reader.consumer.beginning_offsets(self.reader.partitions)
        return all(begin[tp] <= offsets.get(tp.partition, 0) for tp in self.reader.partitions)

    def _discard(self, path: Path, reason: str, detail: str) -> bool:
        STATE_SNAPSHOTS.labels(f"discarded_{reason}"[:40]).inc()
        log.warning("state_snapshot_discarded", path=str(path), reason=reason, detail=detail[:300])
        return False

    def _delete_retention_ms(self) -> int:
        """How long the topic keeps tombstones; a snapshot older than that may miss a delete."""
        try:
            value = topic_config(self.settings.kafka, self.reader.topic).get("delete.retention.ms")
        except (KafkaError, OSError) as exc:
            log.warning("topic_config_unavailable", topic=self.reader.topic, error=str(exc)[:200])
            value = None
        return int(value) if value else DEFAULT_DELETE_RETENTION_MS


def _fast_v2(value: bytes) -> tuple[str, np.ndarray, Weights] | None:
    """(model version, vector, fusion weights) of a well-formed v2 record, or None to take the
    validating path."""
    try:
        doc: Any = orjson.loads(value)
        if not isinstance(doc, dict) or doc.get("schema_version") != 2:
            return None
        dtype, dim, version = VECTOR_DTYPES[doc["dtype"]], doc["dim"], doc["model_version"]
        if type(dim) is not int or not 0 < dim <= MAX_DIM or type(version) is not str:
            return None
        weights = _fast_weights(doc["fusion_weights"])
        if weights is None:
            return None
        # non-strict is ~30 % faster; a payload it would repair cannot pass the exact length check below
        # unless only padding/whitespace differed, and the vector is still checked for finiteness
        raw = binascii.a2b_base64(doc["vector"])
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError):
        return None
    if len(raw) != dim * dtype.itemsize or len(version) > 64 or not _MODEL_VERSION.match(version):
        return None
    vector = np.frombuffer(raw, dtype=dtype)
    if not math.isfinite(float(np.dot(vector, vector))):  # NaN/inf propagate; ~4x cheaper than isfinite
        return None  # (or a float16 overflow of the dot: the validating path decides)
    return version, vector, weights


def _fast_weights(doc: Any) -> Weights | None:
    """`FusionWeights`' checks on parsed JSON: two numbers in [0, 1] summing to 1 (within 1e-3)."""
    if not isinstance(doc, dict) or len(doc) != 2:
        return None
    title: Any = doc.get("title")
    image: Any = doc.get("image")
    if type(title) not in (float, int) or type(image) not in (float, int):
        return None  # bool is not a weight; neither is a missing key
    if not (0.0 <= title <= 1.0 and 0.0 <= image <= 1.0 and abs(title + image - 1.0) <= 1e-3):
        return None
    return float(title), float(image)
