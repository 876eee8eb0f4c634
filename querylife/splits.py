"""One split's prepared data (products, cached features, graded queries) and the head's embeddings and
similarities on it.

Shared by training and evaluation; kept apart from both so that evaluation (and GenFilt, which uses
its AUC) does not import the trainer, and the trainer can import them back without a circle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from querylife.checkpoint import Head


@dataclass
class SplitData:
    products: list[dict[str, Any]]
    image: torch.Tensor
    title: torch.Tensor
    has_image: torch.Tensor
    has_title: torch.Tensor
    types: list[str]
    queries: list[Any]  # querygen.Query
    query_feats: torch.Tensor
    query_product_idx: torch.Tensor  # index (within split) of each query's source product
    index: dict[str, int] = field(default_factory=dict)

    def grades(self, qs: Sequence[int] | None = None) -> np.ndarray:
        """Graded labels [Q, P] (int8) for the split's queries over the split's products."""
        rows = range(len(self.queries)) if qs is None else qs
        out = np.zeros((len(rows), len(self.products)), dtype=np.int8)
        for r, qi in enumerate(rows):
            for pid, g in self.queries[qi].relevance.items():
                j = self.index.get(pid)
                if j is not None:
                    out[r, j] = g
        return out


def embed_products(head: Head, s: SplitData, device: torch.device | str = "cpu") -> torch.Tensor:
    t = F.normalize(head.text_proj(s.title.to(device)), dim=-1)
    i = F.normalize(head.image_proj(s.image.to(device)), dim=-1)
    ids = head.fusion.type_ids(s.types, device=torch.device(device))
    return head.fusion(t, i, ids, s.has_title.to(device), s.has_image.to(device))


def embed_queries(head: Head, s: SplitData, device: torch.device | str = "cpu") -> torch.Tensor:
    return F.normalize(head.text_proj(s.query_feats.to(device)), dim=-1)


@torch.no_grad()
def split_similarities(head: Head, s: SplitData, device: torch.device | str = "cpu") -> torch.Tensor:
    head.eval()
    return (embed_queries(head, s, device) @ embed_products(head, s, device).t()).cpu()
