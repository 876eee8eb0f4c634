"""A local snapshot of one model version's embedding state, so a restart reads only the topic's tail.

One file per (topic, model version): `<state dir>/<topic>.<model version>.qlsnap`. Layout: 8 magic
bytes, the header length (8 bytes, little-endian), an orjson header, the ids (an orjson list in
row order), then per block of rows (`BLOCK_ROWS`) its vectors as raw rows of the stored dtype and its
fusion weights as float32 (title, image) pairs (format 2). The header names the topic and its
Kafka topic id, the next offset of every partition, the creation time, the sizes and a CRC32C of
everything after it. It is written to a temporary file, fsynced and renamed over the old one, so a
reader sees the old snapshot or the new one, never half of one.

`read` refuses (`SnapshotRejected`, with a reason for the log) a snapshot of another topic, including
a topic deleted and recreated under the same name (another topic id, even if refilled past the stored
offsets), a truncated or corrupt file, one of another dtype or width, one of another format (a format-1 file
has no fusion weights: the state is rebuilt from the topic, which has them), and one older than the topic's
`delete.retention.ms`: a tombstone it never saw may be gone from the topic by then, so a deleted
product would come back.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson
from crc32c import crc32c

from worker.vector_matrix import WEIGHTS, VectorMatrix

MAGIC = b"QLSNAP\x00\x01"
FORMAT = 2  # 1: vectors only (before the fusion weights were kept)


class SnapshotRejected(Exception):
    """A snapshot that must not be used; `reason` is a short code for the log and the metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class SnapshotMeta:
    """Where a snapshot stands: the state after applying every record below `offsets` of `topic`."""

    topic: str
    topic_id: str
    model_version: str
    dim: int
    dtype: str
    offsets: dict[int, int]
    created_at: float  # unix seconds
    rows: int = 0
    ids_bytes: int = 0
    vectors_bytes: int = 0
    weights_bytes: int = 0
    checksum: int = 0
    format: int = FORMAT


def path_for(state_dir: Path, topic: str, model_version: str) -> Path:
    return state_dir / f"{topic}.{model_version}.qlsnap"


def write(path: Path, meta: SnapshotMeta, matrix: VectorMatrix) -> SnapshotMeta:
    """Write `matrix` atomically at `path`; returns the header written (sizes and checksum filled)."""
    ids, chunks = matrix.ordered()
    ids_blob = orjson.dumps(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as f:
            header_at = _reserve_header(f)
            f.write(ids_blob)
            checksum, sizes = crc32c(ids_blob), [0, 0]
            for chunk in chunks:
                for i, part in enumerate(chunk):  # the block's vectors, then its weights
                    data = np.ascontiguousarray(part).data
                    f.write(data)
                    checksum, sizes[i] = crc32c(data, checksum), sizes[i] + data.nbytes
            done = SnapshotMeta(
                **(
                    asdict(meta)
                    | {
                        "rows": len(ids),
                        "ids_bytes": len(ids_blob),
                        "vectors_bytes": sizes[0],
                        "weights_bytes": sizes[1],
                        "checksum": checksum,
                    }
                )
            )
            _write_header(f, header_at, done)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return done


def read(
    path: Path, topic: str, topic_id: str | None, dim: int, dtype: str, max_age_s: float
) -> tuple[SnapshotMeta, VectorMatrix]:
    """The snapshot at `path` as a filled matrix, or `SnapshotRejected` saying why it is unusable."""
    if not path.exists():
        raise SnapshotRejected("missing", str(path))
    with path.open("rb") as f:
        meta = _read_header(f, path)
        expected = f.tell() + meta.ids_bytes + meta.vectors_bytes + meta.weights_bytes
        if path.stat().st_size != expected:
            raise SnapshotRejected("truncated", f"{path.stat().st_size} bytes, header says {expected}")
        _check_identity(meta, topic, topic_id, dim, dtype, max_age_s)
        ids_blob = f.read(meta.ids_bytes)
        checksum = crc32c(ids_blob)
        ids = orjson.loads(ids_blob)
        if (
            len(ids) != meta.rows
            or meta.vectors_bytes != meta.rows * dim * np.dtype(dtype).itemsize
            or meta.weights_bytes != meta.rows * WEIGHTS * 4
        ):
            raise SnapshotRejected("corrupt", "row count does not match the sizes")
        matrix = VectorMatrix(dim, dtype)

        def fill(*views: np.ndarray) -> None:
            nonlocal checksum
            for view in views:  # the block's vectors, then its weights
                if f.readinto(view.data.cast("B")) != view.nbytes:
                    raise SnapshotRejected("truncated", "rows end early")
                checksum = crc32c(view.data, checksum)

        matrix.load_rows(ids, fill)
    if checksum != meta.checksum:
        raise SnapshotRejected("corrupt", "checksum mismatch")
    if not all(np.isfinite(block).all() for block in matrix.blocks):
        raise SnapshotRejected("corrupt", "non-finite vector")
    if not all(_weights_valid(w) for w in matrix.weights):
        raise SnapshotRejected("corrupt", "fusion weights out of [0, 1]")
    return meta, matrix


def _weights_valid(weights: np.ndarray) -> bool:
    """Each row is (title, image) in [0, 1], or NaN for both (a record without weights)."""
    known = ~np.isnan(weights[:, 0])
    rows = weights[known]
    return bool(np.isnan(weights[~known, 1]).all() and ((rows >= 0) & (rows <= 1)).all())


def _check_identity(
    meta: SnapshotMeta, topic: str, topic_id: str | None, dim: int, dtype: str, max_age_s: float
) -> None:
    if meta.topic != topic:
        raise SnapshotRejected("other_topic", f"snapshot of {meta.topic!r}, reading {topic!r}")
    if topic_id is None:
        raise SnapshotRejected(
            "topic_id_unknown", "the broker gave no topic id: the topic cannot be verified"
        )
    if meta.topic_id != topic_id:
        raise SnapshotRejected("topic_recreated", f"topic id {meta.topic_id}, now {topic_id}")
    if (meta.dim, meta.dtype) != (dim, dtype):
        raise SnapshotRejected("layout_changed", f"{meta.dim}x{meta.dtype}, want {dim}x{dtype}")
    age = time.time() - meta.created_at
    if age > max_age_s:
        raise SnapshotRejected("expired", f"{age:.0f} s old > delete.retention.ms ({max_age_s:.0f} s)")


def _reserve_header(f: BinaryIO) -> int:
    f.write(MAGIC + (0).to_bytes(8, "little") + b" " * _HEADER_ROOM)
    return len(MAGIC)


_HEADER_ROOM = 4096  # the header is rewritten in place once sizes and checksum are known


def _write_header(f: BinaryIO, at: int, meta: SnapshotMeta) -> None:
    header = orjson.dumps(asdict(meta), option=orjson.OPT_NON_STR_KEYS)
    if len(header) > _HEADER_ROOM:
        raise ValueError(f"snapshot header of {len(header)} bytes (more partitions than it has room for)")
    end = f.tell()
    f.seek(at)
    f.write(_HEADER_ROOM.to_bytes(8, "little") + header.ljust(_HEADER_ROOM))
    f.seek(end)


def _read_header(f: BinaryIO, path: Path) -> SnapshotMeta:
    if f.read(len(MAGIC)) != MAGIC:
        raise SnapshotRejected("corrupt", f"{path.name} is not a snapshot")
    room = int.from_bytes(f.read(8), "little")
    raw = f.read(room)
    if room != _HEADER_ROOM or len(raw) != room:
        raise SnapshotRejected("truncated", "header")
    try:
        doc: dict[str, Any] = orjson.loads(raw)
        doc["offsets"] = {int(p): int(o) for p, o in doc["offsets"].items()}
        meta = SnapshotMeta(**doc)
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as exc:
        raise SnapshotRejected("corrupt", f"header: {exc}") from None
    if meta.format != FORMAT:
        raise SnapshotRejected("format", f"format {meta.format}, this worker reads {FORMAT}")
    return meta


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
