"""Query-LIFE model: the serving contract used by the Triton model repository.

``load_model()`` returns a ``QueryLifeModel`` made of the packaged frozen towers plus the committed
trained head (``querylife/weights/``). All outputs are deterministic; everything loads offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from querylife import scoring
from querylife.calibration import Calibration
from querylife.checkpoint import Head, load_head
from querylife.towers import Towers, build_towers

TEXT_BATCH = 256
IMAGE_BATCH = 64


class QueryLifeModel(torch.nn.Module):
    version: str
    embed_dim: int
    product_types: list[str]
    image_size: int

    def __init__(self, towers: Towers, head: Head, calibration: Calibration, meta: dict[str, Any]) -> None:
        super().__init__()
        self.towers = towers
        self.clip = towers.clip
        self.head = head
        # the trained heads ARE open_clip's projection layers (visual.head.proj, text.proj)
        self.clip.visual.head.proj = head.image_proj
        self.clip.text.proj = head.text_proj
        self.calibration = calibration
        self.meta = meta
        self.version = str(meta["version"])
        self.embed_dim = int(head.config["embed_dim"])
        self.product_types = [t for t in head.fusion.type_vocab if t != "<unk>"]
        self.image_size = int(towers.image_size)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Queries and titles (one shared text tower) -> [N, D] L2-normalised."""
        if len(texts) == 0:
            return torch.empty(0, self.embed_dim, device=self.device)
        outs = []
        for i in range(0, len(texts), TEXT_BATCH):
            feats = self.towers.text_features(list(texts[i : i + TEXT_BATCH]))
            outs.append(F.normalize(self.head.text_proj(feats), dim=-1))
        return torch.cat(outs)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels from ``imaging.preprocess(images, model.image_size)`` -> [N, D] L2-normalised."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels [N, 3, S, S], got {tuple(pixels.shape)}")
        if pixels.shape[0] == 0:
            return torch.empty(0, self.embed_dim, device=self.device)
        outs = []
        for i in range(0, pixels.shape[0], IMAGE_BATCH):
            feats = self.towers.image_features(pixels[i : i + IMAGE_BATCH].to(self.device))
            outs.append(F.normalize(self.head.image_proj(feats), dim=-1))
        return torch.cat(outs)

    def fuse(
        self,
        title_emb: torch.Tensor,
        image_emb: torch.Tensor,
        product_types: list[str],
        has_title: torch.Tensor,
        has_image: torch.Tensor,
    ) -> torch.Tensor:
        """Type-conditioned fusion -> [N, D] L2-normalised; a missing modality falls back exactly."""
        args = (title_emb, image_emb, product_types, has_title, has_image)
        return scoring.fuse(self.head.fusion, *args, device=self.device)[0]

    def fusion_weights(
        self,
        title_emb: torch.Tensor,
        image_emb: torch.Tensor,
        product_types: list[str],
        has_title: torch.Tensor,
        has_image: torch.Tensor,
    ) -> torch.Tensor:
        """[N, 2] (w_title, w_image) used by ``fuse`` (served as FUSION_WEIGHTS, the "why" of a score)."""
        args = (title_emb, image_emb, product_types, has_title, has_image)
        return scoring.fuse(self.head.fusion, *args, device=self.device)[1]

    def relevance(
        self, query_emb: torch.Tensor, product_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-wise (cosine similarity [N], calibrated probability [N] in [0, 1])."""
        return scoring.relevance(self.calibration, query_emb, product_emb)

    def label(self, probability: float) -> str:
        """One of the schemas.ScoreLabel values: irrelevant / partial / relevant / exact."""
        return self.calibration.label(float(probability))


def load_model(checkpoint_dir: str | Path | None = None, device: str = "cpu") -> QueryLifeModel:
    """Packaged frozen towers + a head checkpoint (None -> the committed ``querylife/weights/``)."""
    head, calibration, meta = load_head(checkpoint_dir)
    towers = build_towers(int(meta["image_size"]), device="cpu")
    model = QueryLifeModel(towers, head, calibration, meta)
    model.to(device)
    return model
