"""Product vectors of one model version as rows of fixed-size numpy blocks, addressed by product id.

A dict of one small array per product costs ~100 bytes of Python objects per vector on top of its
data, and growing one contiguous array by copying doubles the peak memory at a million products.
Blocks of `BLOCK_ROWS` rows are allocated as needed and never copied; a delete frees its row for the
next insert. Storage is float32 or float16 (`QL_WORKER_STATE_DTYPE`); rows come back as float32.

Beside each vector, the two fusion weights (title, image) that made it, as float32 (8 bytes a product:
8 MB at a million, under 2 % of the float16 vectors): the "why" of a score that `QueryScores` and
score replies carry. NaN where the record had none (a v1 record).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

BLOCK_ROWS = 1 << 16
WEIGHTS = 2  # (title, image)
Weights = tuple[float, float]


class VectorMatrix:
    """ids -> rows of one model version's vectors and fusion weights; `rows(ids)` gathers a batch."""

    def __init__(self, dim: int, dtype: str = "float32") -> None:
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.ids: dict[str, int] = {}
        self.blocks: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []  # per block [BLOCK_ROWS, 2] float32, NaN: not known
        self._free: list[int] = []
        self._next = 0  # rows below this were handed out once

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self.ids

    @property
    def nbytes(self) -> int:
        """Bytes of vector storage allocated (ids and weights not included)."""
        return sum(block.nbytes for block in self.blocks)

    @property
    def weights_nbytes(self) -> int:
        """Bytes of fusion-weight storage allocated (8 a row)."""
        return sum(w.nbytes for w in self.weights)

    def put(self, product_id: str, vector: np.ndarray, weights: Weights | None = None) -> None:
        """Insert or overwrite one product's vector (any float dtype; converted on assignment) and the
        fusion weights that made it (None: not known)."""
        row = self.ids.get(product_id)
        if row is None:
            row = self._take_row()
            self.ids[product_id] = row
        self.blocks[row // BLOCK_ROWS][row % BLOCK_ROWS] = vector
        self.weights[row // BLOCK_ROWS][row % BLOCK_ROWS] = (np.nan, np.nan) if weights is None else weights

    def delete(self, product_id: str) -> bool:
        row = self.ids.pop(product_id, None)
        if row is None:
            return False
        self._free.append(row)
        return True

    def rows(self, product_ids: Sequence[str]) -> np.ndarray:
        """Vectors of `product_ids` (all must be present), stacked as float32 [n, dim]."""
        out = np.empty((len(product_ids), self.dim), dtype=np.float32)
        for i, pid in enumerate(product_ids):
            row = self.ids[pid]
            out[i] = self.blocks[row // BLOCK_ROWS][row % BLOCK_ROWS]
        return out

    def fusion_weights(self, product_ids: Iterable[str]) -> dict[str, Weights]:
        """(title, image) weights of the given products that have them (rounded to 1e-6: float32
        storage, so a record's 0.6 comes back as 0.6); products unknown or without weights left out."""
        rows = [(pid, self.ids[pid]) for pid in product_ids if pid in self.ids]
        found = np.empty((len(rows), WEIGHTS), dtype=np.float64)
        for i, (_, row) in enumerate(rows):
            found[i] = self.weights[row // BLOCK_ROWS][row % BLOCK_ROWS]
        values = np.round(found, 6).tolist()
        return {pid: (w[0], w[1]) for (pid, _), w in zip(rows, values, strict=True) if not math.isnan(w[0])}

    def load_rows(self, product_ids: list[str], fill: Callable[[np.ndarray, np.ndarray], None]) -> None:
        """Bulk load into an empty matrix: `product_ids[i]` gets row i, and `fill(vectors, weights)`
        writes the stored vectors and weights of each block's used rows into those views in place
        (a snapshot reads its file straight into the blocks, with no second copy)."""
        if self.ids:
            raise ValueError("load_rows needs an empty matrix")
        self.ids = {pid: row for row, pid in enumerate(product_ids)}
        if len(self.ids) != len(product_ids):
            raise ValueError("duplicate product ids")
        self._next = len(product_ids)
        for start in range(0, self._next, BLOCK_ROWS):
            block = np.zeros((BLOCK_ROWS, self.dim), dtype=self.dtype)
            weights = np.full((BLOCK_ROWS, WEIGHTS), np.nan, dtype=np.float32)
            used = min(BLOCK_ROWS, self._next - start)
            fill(block[:used], weights[:used])
            self.blocks.append(block)
            self.weights.append(weights)

    def ordered(self) -> tuple[list[str], Iterator[tuple[np.ndarray, np.ndarray]]]:
        """Ids in row order, and their stored vectors and weights in that order, a block's worth at a
        time.

        A snapshot writes these; rows freed by deletes are left out, so a loaded snapshot holds the
        same products in rows 0..n-1.
        """
        order = sorted(self.ids.items(), key=lambda item: item[1])
        ids = [pid for pid, _ in order]
        rows = np.fromiter((row for _, row in order), dtype=np.int64, count=len(order))

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for start in range(0, len(rows), BLOCK_ROWS):
                part = rows[start : start + BLOCK_ROWS]  # ascending, so grouping by block keeps order
                blocks = part // BLOCK_ROWS
                picks = [(b, part[blocks == b] % BLOCK_ROWS) for b in np.unique(blocks)]
                yield (
                    np.concatenate([self.blocks[b][idx] for b, idx in picks]),
                    np.concatenate([self.weights[b][idx] for b, idx in picks]),
                )

        return ids, chunks()

    def nearest(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query vector [M, dim], the `k` products of highest cosine similarity, best first.

        Exact search, block by block (one [rows, dim] x [dim, M] product each, then a partial sort),
        so memory stays one block's similarities; at 1M products x 256 it is a few hundred ms for a
        batch of queries on one core.
        """
        if not self.ids or k < 1 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        q = queries.astype(np.float32) / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        used = np.zeros(self._next, dtype=bool)
        row_ids = np.empty(self._next, dtype=object)
        rows = np.fromiter(self.ids.values(), dtype=np.int64, count=len(self.ids))
        used[rows], row_ids[rows] = True, list(self.ids)
        cand_rows, cand_sims = [], []
        for b, block in enumerate(self.blocks):
            start = b * BLOCK_ROWS
            n = min(BLOCK_ROWS, self._next - start)
            vectors = block[:n].astype(np.float32)
            sims = (vectors @ q.T) / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            sims[~used[start : start + n]] = -np.inf
            take = min(k, n)
            idx = np.argpartition(-sims, take - 1, axis=0)[:take]
            cand_rows.append(idx + start)
            cand_sims.append(np.take_along_axis(sims, idx, axis=0))
        all_rows, all_sims = np.concatenate(cand_rows), np.concatenate(cand_sims)
        order = np.argsort(-all_sims, axis=0, kind="stable")[:k]
        return [
            [
                (str(row_ids[all_rows[o, m]]), float(all_sims[o, m]))
                for o in order[:, m]
                if np.isfinite(all_sims[o, m])
            ]
            for m in range(q.shape[0])
        ]

    def _take_row(self) -> int:
        if self._free:
            return self._free.pop()
        row = self._next
        if row // BLOCK_ROWS == len(self.blocks):
            self.blocks.append(np.zeros((BLOCK_ROWS, self.dim), dtype=self.dtype))
            self.weights.append(np.full((BLOCK_ROWS, WEIGHTS), np.nan, dtype=np.float32))
        self._next += 1
        return row
