"""Head checkpoint: ``head.pt`` (projections + fusion + temperature) + ``head.json`` (metadata).

The frozen towers are not stored (they come from the packages); the head stays ~2 MB so the trained
default can be committed under ``querylife/weights/``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from querylife.calibration import Calibration
from querylife.fusion import Fusion
from querylife.losses import LogitScale
from querylife.towers import EMBED_DIM, IMAGE_FEAT_DIM, TEXT_FEAT_DIM

CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "head.pt"
META_FILE = "head.json"
DEFAULT_DIR = Path(__file__).resolve().parent / "weights"


class ResidualAdapter(nn.Module):
    """``x + up(drop(relu(down(x))))`` on the frozen image-trunk features: a nonlinear correction
    the linear projection cannot make. ``up`` starts at zero, so training starts from the linear head."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.up(self.drop(torch.relu(self.down(x))))
        return out


class Head(nn.Module):
    """Everything that is trained: the two open_clip projections, the fusion and the temperature.

    ``image_adapter`` > 0 puts a residual adapter of that width before the image projection, inside
    ``image_proj`` (so open_clip's visual head, the Triton image encoder and training all run it);
    0 keeps the plain linear projection and the committed heads' weight names."""

    def __init__(
        self,
        type_vocab: list[str],
        fusion: str = "type_gate",
        embed_dim: int = EMBED_DIM,
        type_dim: int = 32,
        hidden: int = 64,
        image_adapter: int = 0,
    ) -> None:
        super().__init__()
        linear = nn.Linear(IMAGE_FEAT_DIM, embed_dim, bias=False)
        self.image_proj: nn.Module = (
            nn.Sequential(ResidualAdapter(IMAGE_FEAT_DIM, image_adapter), linear) if image_adapter else linear
        )
        self.text_proj = nn.Linear(TEXT_FEAT_DIM, embed_dim, bias=False)
        self.fusion = Fusion(fusion, embed_dim, type_vocab, type_dim=type_dim, hidden=hidden)
        self.logit_scale = LogitScale()
        self.config: dict[str, Any] = {
            "fusion": fusion,
            "embed_dim": embed_dim,
            "type_dim": type_dim,
            "hidden": hidden,
            "image_adapter": image_adapter,
        }


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


VERSION_PREFIX = "querylife-v2"
"""v2: the version hashes everything that makes a score (v1 hashed the weights only, so a refit of
the label thresholds changed what a version answered without changing its name)."""


def version_for(weights_sha256: str, meta: dict[str, Any]) -> str:
    """The served name of a head: its weights, calibration (score mapping and label thresholds),
    image size and head config. Any change to one of them is a new version, exported beside the
    served one and rolled out through `qlworker rollout`."""
    scored = {k: meta[k] for k in ("calibration", "image_size", "head_config", "type_vocab")}
    h = hashlib.sha256(weights_sha256.encode())
    h.update(json.dumps(scored, sort_keys=True).encode())
    return f"{VERSION_PREFIX}-{h.hexdigest()[:10]}"


def save_head(
    path: str | Path,
    head: Head,
    calibration: Calibration,
    image_size: int,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write head.pt + head.json to directory ``path``; returns the version string."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    torch.save(state, out / WEIGHTS_FILE)
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "weights_sha256": weights_hash(state),
        "image_size": image_size,
        "head_config": head.config,
        "type_vocab": head.fusion.type_vocab,
        "calibration": calibration.to_dict(),
    }
    meta.update(extra or {})
    meta["version"] = version_for(meta["weights_sha256"], meta)
    _write_meta(out, meta)
    return str(meta["version"])


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def save_calibration(path: str | Path, calibration: Calibration) -> str:
    """Replace head.json's calibration; the weights stay, the version becomes the new one (returned):
    the same name must never answer with other scores or labels."""
    src = Path(path)
    meta = json.loads((src / META_FILE).read_text())
    meta["calibration"] = calibration.to_dict()
    meta["version"] = version_for(meta["weights_sha256"], meta)
    _write_meta(src, meta)
    return str(meta["version"])


def load_head(path: str | Path | None = None) -> tuple[Head, Calibration, dict[str, Any]]:
    src = Path(path) if path is not None else DEFAULT_DIR
    meta = json.loads((src / META_FILE).read_text())
    if int(meta.get("format", 0)) != CHECKPOINT_FORMAT:
        raise ValueError(f"unsupported head checkpoint format {meta.get('format')}")
    cfg = meta["head_config"]
    vocab = [t for t in meta["type_vocab"] if t != "<unk>"]
    head = Head(
        vocab,
        fusion=cfg["fusion"],
        embed_dim=cfg["embed_dim"],
        type_dim=cfg["type_dim"],
        hidden=cfg["hidden"],
        image_adapter=int(cfg.get("image_adapter", 0)),
    )
    state = torch.load(src / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    if weights_hash(state) != meta["weights_sha256"]:
        raise ValueError(f"head weights in {src} do not match head.json (sha256 mismatch)")
    head.load_state_dict(state, strict=True)
    if head.fusion.type_vocab != meta["type_vocab"]:
        raise ValueError("type vocabulary mismatch between head.json and the rebuilt fusion")
    head.eval()
    return head, Calibration.from_dict(meta["calibration"]), meta
