"""Safe image decoding and preprocessing (Pillow + torch; no torchvision transforms).

The Triton image encoder uses exactly these functions, so training, evaluation and serving see
identical pixels. Model paths decode with ``image_size`` (or through `decode_batch`): each image is
reduced to the model input right after decoding, so a batch never holds full-size images.

The work per image is bounded before it is done (docs/reliability.md, "Bounded image
preprocessing"): bytes, pixels, aspect ratio, JPEG scans and a WEBP's canvas are checked from the
header, each refusal with its own `ImageError` reason, and the resize never allocates more than the
larger of the source and 64 model-size images, whatever the input's shape.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from querylife.towers import DEFAULT_IMAGE_SIZE, IMAGE_MEAN, IMAGE_STD
from schemas.limits import LIMITS

MAX_ASPECT_RATIO = 32.0
"""Longer side / shorter side. A product photo is rarely beyond 4:1; the centre crop of a 32:1 image
keeps 3 % of it. Beyond this the image is refused as ``image_aspect_ratio`` (it also bounds the
longest row a decoder sees: at most sqrt(pixels * 32), 23,170 px at the 16.7 Mpx limit)."""

MAX_JPEG_SCANS = 100
"""Start-of-scan markers a JPEG may hold. A progressive JPEG has about 10 scans (libjpeg's default
script); libjpeg decodes every scan over the whole coefficient buffer, so 1 MiB of tiny scans (~17,000)
made a 4096 x 4096 JPEG take about a minute. Beyond this: ``too_many_scans`` (libjpeg-turbo documents
the same guard as djpeg's ``-maxscans``)."""

FULL_RESIZE_BUDGET = 64
"""`resize_center_crop` resizes the whole image (today's pixels, bit for bit) only while that
allocates at most max(source, FULL_RESIZE_BUDGET model-size images); beyond, it resizes only the
crop's box. With `MAX_ASPECT_RATIO` <= 64 every image `decode_image` accepts takes the first path."""


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
    max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
) -> Image.Image:
    """Decode ``data`` into an RGB image, enforcing size, pixel-count, shape and format limits.

    The header is parsed first (``Image.open`` is lazy) so the pixel count, aspect ratio and format
    are checked before any pixel data is decoded; a file whose header claims more than ``max_pixels``
    is refused as ``decompression_bomb`` without allocating it, one whose sides differ by more than
    ``max_aspect_ratio`` as ``image_aspect_ratio`` (None: no limit). Some checks come before Pillow
    even opens the payload, because opening already costs: a WEBP's canvas (libwebp allocates two
    canvas-size buffers in ``Image.open``) and a JPEG's number of scans (``too_many_scans``, see
    `MAX_JPEG_SCANS`). Only the decoders of ``allowed_formats`` ever see the bytes: any other format is
    ``unsupported_image_format`` without being parsed. Of an animated WEBP only the first frame is
    decoded (other multi-frame images are refused).

    With ``image_size`` the result is the model input, ``resize_center_crop(image, image_size)``,
    made right after decoding so the full-size pixels never outlive this call. A JPEG whose sides are
    both at least ``4 * image_size`` is moreover decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``,
    never below ``2 * image_size`` a side), so it is never decoded at full size; every other image
    gives exactly the pixels of ``resize_center_crop(decode_image(data), image_size)``. Why: a 1 MiB
    file may decode to 16.7 Mpx (64 MiB in Pillow), and a batch of full-size images to gigabytes.

    Never raises anything but `ImageError`: an unexpected exception from a decoder is
    ``image_decode_error`` (its type in the message), a `MemoryError` ``image_out_of_memory``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError("image_decode_error", f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("image_decode_error", "empty image payload")
    if len(data) > max_bytes:
        raise ImageError("image_too_large", f"{len(data)} bytes > limit {max_bytes}")
    allowed = sorted({f.upper() for f in allowed_formats})
    try:
        raw = bytes(data)
        _check_before_open(raw, allowed, max_pixels, max_aspect_ratio)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=allowed)
            fmt = (img.format or "").upper()
            if fmt not in allowed:
                raise ImageError(
                    "unsupported_image_format", f"format {fmt or 'unknown'} not in {sorted(allowed)}"
                )
            _check_dimensions(*img.size, max_pixels, max_aspect_ratio)
            if getattr(img, "n_frames", 1) > 1 and fmt != "WEBP":
                raise ImageError("unsupported_image_format", "multi-frame images are not accepted")
            if image_size is not None and fmt == "JPEG":
                img.draft(None, (2 * image_size, 2 * image_size))  # DCT scaling: 1/2, 1/4 or 1/8
            img.load()  # full decode (of the first frame): raises on truncated / corrupt data
            # resize_center_crop converts to RGB itself (only under the crop for an extremely thin image)
            rgb = img.convert("RGB") if image_size is None else resize_center_crop(img, image_size)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decompression_bomb", str(exc)) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError("unsupported_image_format", f"not a {'/'.join(allowed)} image") from exc
    except MemoryError as exc:  # should be unreachable with the checks above; never fail a batch for it
        raise ImageError("image_out_of_memory", f"MemoryError: {exc}") from exc
    except Exception as exc:  # OSError, SyntaxError, ValueError, EOFError, struct.error, OverflowError...
        raise ImageError("image_decode_error", f"{type(exc).__name__}: {exc}") from exc
    return rgb


def _check_dimensions(width: int, height: int, max_pixels: int, max_aspect_ratio: float | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageError("image_decode_error", f"invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            "decompression_bomb", f"{width}x{height} = {width * height} pixels > limit {max_pixels}"
        )
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageError(
            "image_aspect_ratio",
            f"{width}x{height}: sides differ by more than {max_aspect_ratio:g}:1",
        )


def _check_before_open(
    data: bytes, allowed: Sequence[str], max_pixels: int, max_aspect_ratio: float | None
) -> None:
    """Refuse from the raw header what would cost before Pillow's own checks run (see `decode_image`)."""
    if "WEBP" in allowed and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = _webp_canvas(data)
        if size is not None:  # unparseable: libwebp refuses it, without allocating a canvas
            _check_dimensions(*size, max_pixels, max_aspect_ratio)
    elif "JPEG" in allowed and data[:3] == b"\xff\xd8\xff":
        # Every scan starts with FF DA, which entropy-coded data never contains (an FF there is
        # followed by 00 or a restart marker): the count is an upper bound on the scans libjpeg reads.
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise ImageError("too_many_scans", f"{scans} JPEG start-of-scan markers > limit {MAX_JPEG_SCANS}")


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WEBP's first chunk (VP8X canvas, VP8 or VP8L frame header), or None."""
    if len(data) < 30:
        return None
    chunk = data[12:16]
    try:
        if chunk == b"VP8X":  # 24-bit canvas width - 1 and height - 1: up to 16,777,216 a side
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # key frame: 14-bit width, height
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L" and data[20] == 0x2F:  # 14-bit width - 1, height - 1
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    except struct.error:
        return None
    return None


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic) then center-crop ``size`` x ``size``.

    The whole image is converted to RGB, resized and cropped while the resize allocates at most
    max(source, `FULL_RESIZE_BUDGET` x size²) pixels: every image up to 64:1 (or downscaled at all),
    with exactly the pixels this function always gave. Beyond (an image far thinner than ``size``,
    e.g. 16,777,216 x 1, whose full resize would be 2,147,483,648 x 128 px), only the source pixels
    under the crop are converted (a few rows or columns), and only the crop's box is resized, one
    axis at a time, so nothing larger than the source or the ``size``-wide rows under the crop is
    allocated. That path samples the same points, but Pillow takes the box as float32 and may order
    the passes differently, so its pixels can differ from a full resize by a level or two.
    """
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if nw * nh <= max(w * h, FULL_RESIZE_BUDGET * size * size):
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        if (nw, nh) != (w, h):
            rgb = rgb.resize((nw, nh), Image.Resampling.BICUBIC)
        return rgb.crop((left, top, left + size, top + size))
    sx, sy = w / nw, h / nh  # source pixels per resized pixel
    x0, x1 = left * sx, min(float(w), (left + size) * sx)
    y0, y1 = top * sy, min(float(h), (top + size) * sy)
    # source pixels the bicubic filter reads (2 output pixels each side, in source units, + rounding)
    rx, ry = 2.0 * max(sx, 1.0) + 1.0, 2.0 * max(sy, 1.0) + 1.0
    c0, c1 = max(0, math.floor(x0 - rx)), min(w, math.ceil(x1 + rx))
    r0, r1 = max(0, math.floor(y0 - ry)), min(h, math.ceil(y1 + ry))
    under = img.crop((c0, r0, c1, r1))
    under = under if under.mode == "RGB" else under.convert("RGB")
    rows = under.resize((size, r1 - r0), Image.Resampling.BICUBIC, box=(x0 - c0, 0, x1 - c0, r1 - r0))
    return rows.resize((size, size), Image.Resampling.BICUBIC, box=(0, y0 - r0, size, y1 - r0))


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
    max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
) -> DecodedBatch:
    """Decode and preprocess a batch of encoded images (the Triton image encoder's input side).

    An empty payload is "no image" (neither a row nor an error); a bad one fails alone, whatever it
    raises (`MemoryError` included): the others still get their rows. Each image is reduced to
    ``image_size`` as it is decoded (`decode_image`), so the batch holds only model-size images
    whatever the payloads' dimensions.
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
                    max_aspect_ratio=max_aspect_ratio,
                )
            )
            batch.rows.append(i)
        except ImageError as exc:
            batch.errors[i] = exc
        except MemoryError as exc:  # decode_image converts everything; this keeps the contract if not
            batch.errors[i] = ImageError("image_out_of_memory", f"MemoryError: {exc}")
        except Exception as exc:
            batch.errors[i] = ImageError("image_decode_error", f"{type(exc).__name__}: {exc}")
    batch.pixels = preprocess(images, image_size)
    return batch
