"""Contrastive losses: InfoNCE with a GenFilt exclusion mask, and the query-aware alignment total."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = math.log(100.0)


class LogitScale(nn.Module):
    """Learnable temperature: scale = exp(s), s clamped to [0, log 100]."""

    def __init__(self, init_temperature: float = 0.07) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self) -> torch.Tensor:
        return self.value.clamp(0.0, MAX_LOGIT_SCALE).exp()


def _ce_masked(logits: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    n = logits.shape[0]
    target = torch.arange(n, device=logits.device)
    if exclude is not None:
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(exclude.bool() & ~eye, float("-inf"))
    return F.cross_entropy(logits, target)


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    exclude_mask: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """InfoNCE between row-aligned L2-normalised ``a`` [B, D] and ``b`` [B, D].

    ``exclude_mask`` [B, B]: True at (i, j) removes b_j from a_i's denominator (and, in the symmetric
    direction, a_i from b_j's); the diagonal (the positive) is never removed.
    """
    logits = logit_scale * a @ b.t()
    loss = _ce_masked(logits, exclude_mask)
    if symmetric:
        loss_t = _ce_masked(logits.t(), exclude_mask.t() if exclude_mask is not None else None)
        loss = 0.5 * (loss + loss_t)
    return loss


@dataclass(frozen=True)
class AlignmentWeights:
    main: float = 1.0  # query <-> fused product
    query_image: float = 0.5  # query <-> image
    query_title: float = 0.5  # query <-> title
    image_title: float = 0.25  # image <-> title (same product)


def alignment_loss(
    query: torch.Tensor,
    fused: torch.Tensor,
    image: torch.Tensor,
    title: torch.Tensor,
    logit_scale: torch.Tensor,
    weights: AlignmentWeights,
    exclude_mask: torch.Tensor | None = None,
    has_image: torch.Tensor | None = None,
    has_title: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Query-aware modal alignment: w_main L(q,f) + w_qi L(q,i) + w_qt L(q,t) + w_it L(i,t)."""
    parts: dict[str, torch.Tensor] = {}
    parts["main"] = info_nce(query, fused, logit_scale, exclude_mask)
    keep_i = has_image.bool() if has_image is not None else None
    keep_t = has_title.bool() if has_title is not None else None

    def sub(
        x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if keep is not None and not bool(keep.all()):
            x, y = x[keep], y[keep]
            mask = mask[keep][:, keep] if mask is not None else None
        if x.shape[0] < 2:
            return x.sum() * 0.0
        return info_nce(x, y, logit_scale, mask)

    if weights.query_image:
        parts["query_image"] = sub(query, image, keep_i, exclude_mask)
    if weights.query_title:
        parts["query_title"] = sub(query, title, keep_t, exclude_mask)
    if weights.image_title:
        both: torch.Tensor | None = None
        if keep_i is not None and keep_t is not None:
            both = keep_i & keep_t
        elif keep_i is not None or keep_t is not None:
            both = keep_i if keep_i is not None else keep_t
        parts["image_title"] = sub(image, title, both, None)
    w = {
        "main": weights.main,
        "query_image": weights.query_image,
        "query_title": weights.query_title,
        "image_title": weights.image_title,
    }
    total = sum(w[k] * v for k, v in parts.items())
    assert isinstance(total, torch.Tensor)
    return total, {k: float(v.detach()) for k, v in parts.items()}
