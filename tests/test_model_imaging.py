import io
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from querylife.imaging import ImageError, decode_batch, decode_image, preprocess

REPO = Path(__file__).resolve().parents[1]


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


# --------------------------------------------------------------------------- model-size decoding


def _big_jpeg(side: int = 4096) -> bytes:
    return _encode(Image.linear_gradient("L").resize((side, side)).convert("RGB"), "JPEG", quality=80)


def test_decoding_for_the_model_gives_model_size_images() -> None:
    big_png = _encode(Image.new("RGB", (4096, 4096), (10, 200, 30)), "PNG")  # 64 MiB decoded
    big_jpeg = _big_jpeg()
    assert len(big_png) < 1 << 20 and len(big_jpeg) < 1 << 20  # both within the 1 MiB payload limit
    for data in (big_png, big_jpeg):
        out = decode_image(data, image_size=64)
        assert out.mode == "RGB" and out.size == (64, 64)
    batch = decode_batch([big_png, b"", b"not an image", big_jpeg], 64)
    assert batch.pixels.shape == (2, 3, 64, 64) and batch.rows == [0, 3]
    assert list(batch.errors) == [2] and batch.errors[2].reason == "unsupported_image_format"
    assert torch.allclose(batch.pixels[0, 1], torch.full((64, 64), 200 / 255 * 2 - 1))


def test_model_size_decoding_keeps_normal_images_pixel_identical() -> None:
    """Reducing right after decoding changes nothing but memory, except for JPEGs >= 4x the model size."""
    photo = Image.effect_noise((300, 220), 40).convert("RGB")
    payloads = [
        _encode(photo.resize(s), fmt) for fmt in ("JPEG", "PNG", "WEBP") for s in [(128, 128), (300, 220)]
    ]
    payloads += [_encode(photo.convert("L"), "PNG"), _encode(photo.convert("RGBA"), "PNG"), _big_jpeg(511)]
    for data in payloads:
        reference = preprocess([decode_image(data)], 128)
        assert torch.equal(preprocess([decode_image(data, image_size=128)], 128), reference)
        assert torch.equal(decode_batch([data], 128).pixels, reference)
    # a large JPEG is decoded at a reduced DCT scale: close to, not equal to, the full-size decode
    big = _big_jpeg(2048)
    diff = (decode_batch([big], 128).pixels - preprocess([decode_image(big)], 128)).abs()
    assert float(diff.mean()) < 0.01


_PEAK_PROBE = """
import gc, io, sys
from pathlib import Path
from PIL import Image
from querylife.imaging import decode_batch

def hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024

payloads = [p.read_bytes() for p in sorted(Path(sys.argv[1]).iterdir())]
small = io.BytesIO()
Image.new("RGB", (256, 256)).save(small, format="PNG")
decode_batch([small.getvalue()], 128)  # load the codecs first
gc.collect()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = hwm_mib()
pixels = decode_batch(payloads, 128).pixels
print(tuple(pixels.shape), hwm_mib() - before)
"""


def _peak_growth_mib(tmp_path: Path, payloads: list[bytes]) -> tuple[tuple[int, ...], int]:
    """Decode a batch in a fresh process: the tensor shape, and how far its peak RSS rose (MiB)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's resettable peak RSS (/proc/self/clear_refs)")
    for i, data in enumerate(payloads):
        (tmp_path / f"{i:03d}").write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split("\n")[-2]
    shape, growth = out.rsplit(" ", 1)
    return tuple(int(v) for v in shape.strip("()").split(",")), int(growth)


def test_a_batch_never_holds_full_size_images(tmp_path: Path) -> None:
    """8 single-colour 4096 x 4096 PNGs (57 KiB each, 64 MiB each decoded): one at a time is decoded and
    reduced, so the peak grows by about one full-size image, not eight (512 MiB)."""
    payloads = [_encode(Image.new("RGB", (4096, 4096), (30 * i, 20, 200)), "PNG") for i in range(8)]
    shape, growth = _peak_growth_mib(tmp_path, payloads)
    assert shape == (8, 3, 128, 128)
    assert growth < 160, f"peak RSS grew {growth} MiB decoding 8 large PNGs (full size: 64 MiB each)"


def test_a_large_jpeg_is_never_decoded_at_full_size(tmp_path: Path) -> None:
    """4096 x 4096 JPEGs decode at 1/8 scale (512 x 512, 1 MiB) instead of 64 MiB each."""
    shape, growth = _peak_growth_mib(tmp_path, [_big_jpeg()] * 4)
    assert shape == (4, 3, 128, 128)
    assert growth < 32, f"peak RSS grew {growth} MiB decoding 4096 x 4096 JPEGs (full size: 64 MiB)"
