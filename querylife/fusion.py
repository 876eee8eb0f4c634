"""Query-based multimodal fusion conditioned on the product type.

``type_gate`` (Query-LIFE): a small gate reads a learned product-type embedding together with the
title and image embeddings and outputs softmax weights over (title, image); the fused embedding is
``normalize(w_t * t + w_i * i)``. The last gate layer starts at zero so training starts from mean
fusion. Variants for baselines/ablations: ``mean`` (fixed 0.5/0.5), ``gate`` (same gate without the
type embedding: the "without type fusion" ablation) and ``concat`` (linear layer over [t; i], the
common-practice baseline). A missing modality is masked before the softmax and the output then is
exactly the other modality's embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

UNK_TYPE = "<unk>"
FUSION_KINDS = ("type_gate", "gate", "mean", "concat")


class Fusion(nn.Module):
    def __init__(
        self,
        kind: str,
        embed_dim: int,
        type_vocab: Sequence[str],
        type_dim: int = 32,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if kind not in FUSION_KINDS:
            raise ValueError(f"unknown fusion kind {kind!r}; expected one of {FUSION_KINDS}")
        self.kind = kind
        self.embed_dim = embed_dim
        vocab = [UNK_TYPE, *sorted({t for t in type_vocab if t and t != UNK_TYPE})]
        self.type_vocab: list[str] = vocab
        self._type_index = {t: i for i, t in enumerate(vocab)}
        self.type_emb = nn.Embedding(len(vocab), type_dim)
        nn.init.normal_(self.type_emb.weight, std=0.1)
        gate_in = 2 * embed_dim + (type_dim if kind == "type_gate" else 0)
        self.gate = nn.Sequential(nn.Linear(gate_in, hidden), nn.GELU(), nn.Linear(hidden, 2))
        # per-type bias on the two logits: directly inspectable type prior
        self.type_bias = nn.Embedding(len(vocab), 2)
        nn.init.zeros_(self.type_bias.weight)
        last = self.gate[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.concat: nn.Linear | None = None
        if kind == "concat":
            self.concat = nn.Linear(2 * embed_dim, embed_dim, bias=False)
            with torch.no_grad():
                eye = torch.eye(embed_dim) * 0.5
                self.concat.weight.copy_(torch.cat([eye, eye], dim=1))

    def type_ids(
        self, product_types: Sequence[str | None], device: torch.device | None = None
    ) -> torch.Tensor:
        idx = [self._type_index.get(t or UNK_TYPE, 0) for t in product_types]
        return torch.tensor(idx, dtype=torch.long, device=device)

    def weights(
        self,
        title: torch.Tensor,
        image: torch.Tensor,
        type_ids: torch.Tensor,
        has_title: torch.Tensor,
        has_image: torch.Tensor,
    ) -> torch.Tensor:
        """Weights [N, 2] over (title, image); rows sum to 1; a missing modality gets exactly 0."""
        n = title.shape[0]
        if self.kind in ("type_gate", "gate"):
            feats = [title, image]
            if self.kind == "type_gate":
                feats.append(self.type_emb(type_ids))
            logits = self.gate(torch.cat(feats, dim=-1))
            if self.kind == "type_gate":
                logits = logits + self.type_bias(type_ids)
        else:
            logits = torch.zeros(n, 2, device=title.device, dtype=title.dtype)
        present = torch.stack([has_title.bool(), has_image.bool()], dim=-1)
        any_present = present.any(dim=-1, keepdim=True)
        # rows with neither modality: uniform weights (their output is defined as zeros below)
        present = present | ~any_present
        logits = logits.masked_fill(~present, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(
        self,
        title: torch.Tensor,
        image: torch.Tensor,
        type_ids: torch.Tensor,
        has_title: torch.Tensor,
        has_image: torch.Tensor,
    ) -> torch.Tensor:
        has_t = has_title.bool().view(-1, 1)
        has_i = has_image.bool().view(-1, 1)
        title = torch.where(has_t, title, torch.zeros_like(title))
        image = torch.where(has_i, image, torch.zeros_like(image))
        if self.concat is not None:
            fused = F.normalize(self.concat(torch.cat([title, image], dim=-1)), dim=-1)
        else:
            w = self.weights(title, image, type_ids, has_title, has_image)
            fused = F.normalize(w[:, :1] * title + w[:, 1:] * image, dim=-1)
        both = has_t & has_i
        # exact fallback: a product with one modality is that modality's embedding
        out = torch.where(both, fused, torch.where(has_t, title, image))
        return out


@torch.no_grad()
def per_type_weights(
    fusion: Fusion,
    title: torch.Tensor,
    image: torch.Tensor,
    product_types: Sequence[str],
) -> dict[str, tuple[float, float]]:
    """Mean (w_title, w_image) per product type over a catalogue with both modalities present."""
    if fusion.kind == "concat":
        return {}
    ids = fusion.type_ids(product_types, device=title.device)
    ones = torch.ones(title.shape[0], dtype=torch.bool, device=title.device)
    w = fusion.weights(title, image, ids, ones, ones).cpu()
    out: dict[str, list[torch.Tensor]] = {}
    for t, row in zip(product_types, w, strict=True):
        out.setdefault(t, []).append(row)
    return {
        t: (float(torch.stack(r)[:, 0].mean()), float(torch.stack(r)[:, 1].mean())) for t, r in out.items()
    }


def plot_type_weights(
    weights: dict[str, tuple[float, float]], path: str, top: int = 40, counts: dict[str, int] | None = None
) -> None:
    """Horizontal bar chart of the image weight per product type (title weight = 1 - image weight)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(weights.items())
    if counts:
        items = sorted(items, key=lambda kv: -counts.get(kv[0], 0))[:top]
    items = sorted(items, key=lambda kv: kv[1][1])
    names = [k for k, _ in items]
    wi = [v[1] for _, v in items]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.22 * len(names) + 1)))
    ax.barh(names, wi, color="tab:orange", label="image weight")
    ax.barh(names, [1 - x for x in wi], left=wi, color="tab:blue", alpha=0.6, label="title weight")
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fusion weight (mean over catalogue products of that type)")
    ax.set_title("Query-LIFE type-gated fusion: image vs title weight per product type")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
