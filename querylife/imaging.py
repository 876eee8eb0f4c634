"""Safe image decoding and preprocessing (Pillow + torch; no torchvision transforms).

The Triton image encoder uses exactly these functions, so training, evaluation and serving see
identical pixels. Model paths decode with ``image_size`` (or through `decode_batch`): each image is
reduced to the model input right after decoding, so a batch never holds full-size images.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from querylife.towers import DEFAULT_IMAGE_SIZE, IMAGE_MEAN, IMAGE_STD
from schemas.limits import LIMITS


class ImageError(ValueError):
    """An image that cannot be used. ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def decode_image(
    data: bytes,
    max_bytes: int = LIMITS.max_image_bytes,
    max_pixels: int = LIMITS.max_image_pixels,
    allowed_formats: Sequence[str] = LIMITS.allowed_image_formats,
    image_size: int | None = None,
) -> Image.Image:
    """Decode ``data`` into an RGB image, enforcing size, pixel-count and format limits.

    The header is parsed first (``Image.open`` is lazy) so the pixel count and format are checked
    before any pixel data is decoded; a file whose header claims more than ``max_pixels`` is refused
    as ``decompression_bomb`` without allocating it. Only the decoders of ``allowed_formats`` ever
    see the bytes: any other format is ``unsupported_image_format`` without being parsed.

    With ``image_size`` the result is the model input, ``resize_center_crop(image, image_size)``,
    made right after decoding so the full-size pixels never outlive this call. A JPEG whose sides are
    both at least ``4 * image_size`` is moreover decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``,
    never below ``2 * image_size`` a side), so it is never decoded at full size; every other image
    gives exactly the pixels of ``resize_center_crop(decode_image(data), image_size)``. Why: a 1 MiB
    file may decode to 16.7 Mpx (64 MiB in Pillow), and a batch of full-size images to gigabytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError("image_decode_error", f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("image_decode_error", "empty image payload")
    if len(data) > max_bytes:
        raise ImageError("image_too_large", f"{len(data)} bytes > limit {max_bytes}")
    allowed = sorted({f.upper() for f in allowed_formats})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)), formats=allowed)
            fmt = (img.format or "").upper()
            if fmt not in allowed:
                raise ImageError(
                    "unsupported_image_format", f"format {fmt or 'unknown'} not in {sorted(allowed)}"
                )
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageError("image_decode_error", f"invalid dimensions {width}x{height}")
            if width * height > max_pixels:
                raise ImageError(
                    "decompression_bomb", f"{width}x{height} = {width * height} pixels > limit {max_pixels}"
                )
            if getattr(img, "n_frames", 1) > 1 and fmt != "WEBP":
                raise ImageError("unsupported_image_format", "multi-frame images are not accepted")
            if image_size is not None and fmt == "JPEG":
                img.draft(None, (2 * image_size, 2 * image_size))  # DCT scaling: 1/2, 1/4 or 1/8
            img.load()  # full decode: raises on truncated / corrupt data
            if image_size is None:
                rgb = img.convert("RGB")
            else:  # no full-size RGB copy when it is RGB already: resize and crop make new images
                rgb = resize_center_crop(img if img.mode == "RGB" else img.convert("RGB"), image_size)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decompression_bomb", str(exc)) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError("unsupported_image_format", f"not a {'/'.join(allowed)} image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("image_decode_error", f"{type(exc).__name__}: {exc}") from exc
    return rgb


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic) then center-crop ``size`` x ``size``."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


_MEAN = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)


def preprocess(images: Sequence[Image.Image], image_size: int = DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """Images -> float tensor [N, 3, S, S], normalised with mean = std = 0.5 (range [-1, 1])."""
    if len(images) == 0:
        return torch.empty(0, 3, image_size, image_size)
    arr = np.stack([np.asarray(resize_center_crop(im, image_size), dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - _MEAN) / _STD


@dataclass
class DecodedBatch:
    """Model input of the payloads that decoded, and why the others did not."""

    pixels: torch.Tensor  # [len(rows), 3, S, S]
    rows: list[int] = field(default_factory=list)  # payload index of each pixel row
    errors: dict[int, ImageError] = field(default_factory=dict)  # payload index -> why it failed


def decode_batch(
    payloads: Sequence[bytes],
    image_size: int,
    max_bytes: int = LIMITS.max_image_bytes,
    max_pixels: int = LIMITS.max_image_pixels,
    allowed_formats: Sequence[str] = LIMITS.allowed_image_formats,
) -> DecodedBatch:
    """Decode and preprocess a batch of encoded images (the Triton image encoder's input side).

    An empty payload is "no image" (neither a row nor an error); a bad one fails alone. Each image is
    reduced to ``image_size`` as it is decoded (`decode_image`), so the batch holds only model-size
    images whatever the payloads' dimensions.
    """
    images: list[Image.Image] = []
    batch = DecodedBatch(pixels=torch.empty(0))
    for i, data in enumerate(payloads):
        if not data:
            continue
        try:
            images.append(
                decode_image(
                    data,
                    max_bytes=max_bytes,
                    max_pixels=max_pixels,
                    allowed_formats=allowed_formats,
                    image_size=image_size,
                )
            )
            batch.rows.append(i)
        except ImageError as exc:
            batch.errors[i] = exc
    batch.pixels = preprocess(images, image_size)
    return batch
