import io
import struct

import pytest
import torch
from PIL import Image

from querylife.imaging import ImageError, decode_image, preprocess


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _reason(data: bytes, **kw: object) -> str:
    with pytest.raises(ImageError) as exc:
        decode_image(data, **kw)  # type: ignore[arg-type]
    return exc.value.reason


def test_decodes_allowed_formats_to_rgb() -> None:
    img = Image.new("RGB", (40, 30), (200, 10, 10))
    for fmt in ("JPEG", "PNG", "WEBP"):
        out = decode_image(_encode(img, fmt))
        assert out.mode == "RGB" and out.size == (40, 30)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 128))
    assert decode_image(_encode(rgba, "PNG")).mode == "RGB"


def test_refuses_gif_bmp_and_garbage() -> None:
    img = Image.new("RGB", (16, 16))
    assert _reason(_encode(img, "GIF")) == "unsupported_image_format"
    assert _reason(_encode(img, "BMP")) == "unsupported_image_format"
    assert _reason(b"this is not an image at all") == "unsupported_image_format"
    assert _reason(b"") == "image_decode_error"


def test_disallowed_formats_are_refused_before_their_decoder_parses_them() -> None:
    tiny = Image.new("RGB", (2, 2), (9, 9, 9))
    for fmt in ("BMP", "TIFF"):
        with pytest.raises(ImageError) as exc:
            decode_image(_encode(tiny, fmt))
        assert exc.value.reason == "unsupported_image_format"
        assert exc.value.message == "not a JPEG/PNG/WEBP image"
    # A valid BMP whose header claims 20000 x 20000 pixels. Had Pillow's BMP plugin parsed it, Pillow's
    # own bomb check would refuse it first (decompression_bomb): only the allowed decoders may look.
    bmp = bytearray(_encode(tiny, "BMP"))
    struct.pack_into("<ii", bmp, 18, 20_000, 20_000)  # BITMAPINFOHEADER width, height
    assert _reason(bytes(bmp)) == "unsupported_image_format"
    # the allow-list is the caller's: a PNG is refused where only JPEG is allowed
    assert _reason(_encode(tiny, "PNG"), allowed_formats=("JPEG",)) == "unsupported_image_format"


def test_truncated_jpeg_is_a_decode_error() -> None:
    data = _encode(Image.effect_noise((128, 128), 60).convert("RGB"), "JPEG", quality=95)
    assert _reason(data[: len(data) // 2]) == "image_decode_error"


def test_size_and_pixel_limits_checked_before_decoding() -> None:
    data = _encode(Image.new("RGB", (64, 64)), "PNG")
    assert _reason(data, max_bytes=len(data) - 1) == "image_too_large"
    # a tiny file that claims many pixels: refused from the header, never decoded
    bomb = _encode(Image.new("L", (5000, 5000)), "PNG", optimize=True)
    assert len(bomb) < 100_000
    assert _reason(bomb) == "decompression_bomb"
    assert _reason(data, max_pixels=64 * 64 - 1) == "decompression_bomb"


def test_preprocess_shape_range_and_center_crop() -> None:
    left_red = Image.new("RGB", (200, 100), (255, 0, 0))
    left_red.paste((0, 0, 255), (100, 0, 200, 100))
    x = preprocess([left_red, Image.new("RGB", (50, 50), (255, 255, 255))], 64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert float(x.max()) <= 1.0 and float(x.min()) >= -1.0
    assert torch.allclose(x[1], torch.ones(3, 64, 64))  # white -> +1 with mean = std = 0.5
    # the crop keeps the middle: left half red, right half blue
    assert float(x[0, 0, 32, 5]) > 0.9 and float(x[0, 2, 32, 58]) > 0.9
    assert preprocess([], 32).shape == (0, 3, 32, 32)
