"""The serving arithmetic after the towers: product fusion and calibrated query-product relevance.

One copy, called by ``QueryLifeModel.fuse`` / ``.relevance`` in process and by the Triton ``fusion``
and ``relevance`` python models, so served scores cannot drift from the reference. It needs only the
trained head (``Fusion``, ``Calibration``), not the towers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from querylife.calibration import Calibration
from querylife.fusion import Fusion


@torch.inference_mode()
def fuse(
    fusion: Fusion,
    title: torch.Tensor,
    image: torch.Tensor,
    product_types: Sequence[str | None],
    has_title: torch.Tensor,
    has_image: torch.Tensor,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fused [N, D] L2-normalised, (title, image) weights [N, 2] that made it), on `device`."""
    dev = device
    args = (
        title.to(dev),
        image.to(dev),
        fusion.type_ids(product_types, device=dev),
        has_title.to(dev).bool(),
        has_image.to(dev).bool(),
    )
    return fusion(*args), fusion.weights(*args)


@torch.inference_mode()
def relevance(
    calibration: Calibration, query: torch.Tensor, product: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise (cosine similarity [N], calibrated probability [N] in [0, 1]) of embedding pairs."""
    if query.shape != product.shape:
        raise ValueError(f"shape mismatch {tuple(query.shape)} vs {tuple(product.shape)}")
    cos = (F.normalize(query.float(), dim=-1) * F.normalize(product.float(), dim=-1)).sum(-1)
    return cos, calibration.probability(cos)
