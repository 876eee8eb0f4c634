"""Builders of hostile images, in memory and small: huge dimensions in a few KB (PNG), JPEG scans
of EOB runs, patched headers, WEBP animations. Shared by tests/test_image_bounds.py,
tests/test_triton_serving.py and benchmarks/image_worst_case.py."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def raw_png(width: int, height: int, depth: int = 8, color: int = 0, interlace: bool = False) -> bytes:
    """A valid PNG of zero rows, compressed as it is built: huge dimensions in a few KB."""
    bits = _CHANNELS[color] * depth
    passes = _ADAM7 if interlace else [(0, 0, 1, 1)]
    z = zlib.compressobj(9)
    idat = []
    for x0, y0, dx, dy in passes:
        pw, ph = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if pw <= 0 or ph <= 0:
            continue
        row = bytes(1 + (pw * bits + 7) // 8)
        step = max(1, (1 << 22) // len(row))
        for done in range(0, ph, step):
            idat.append(z.compress(row * min(step, ph - done)))
    idat.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, int(interlace))
    plte = png_chunk(b"PLTE", bytes(range(256)) * 3) if color == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + plte
        + png_chunk(b"IDAT", b"".join(idat))
        + png_chunk(b"IEND", b"")
    )


def jpeg_units(data: bytes) -> list[tuple[int, bytes]]:
    """A JPEG as (marker, bytes) units; a scan's unit holds its entropy-coded data."""
    units, i = [(0xD8, data[:2])], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xD9:
            break
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not RSTn / stuffing
            while (end := data.index(b"\xff", end)) and (data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7):
                end += 2
        units.append((marker, data[i:end]))
        i = end
    units.append((0xD9, b"\xff\xd9"))
    return units


def with_extra_scans(progressive_jpeg: bytes, extra: int) -> bytes:
    """Repeat the smallest scan (with the Huffman tables before it) ``extra`` times before EOI: scans
    of EOB runs, a few bytes each, that libjpeg still runs over every block of the image."""
    units = jpeg_units(progressive_jpeg)
    groups, tables = [], b""
    for marker, unit in units:
        if marker == 0xC4:
            tables += unit
        elif marker == 0xDA:
            groups.append(tables + unit)
            tables = b""
    smallest = min(groups, key=len)
    return b"".join(u for m, u in units if m != 0xD9) + smallest * extra + b"\xff\xd9"


def patch_dimensions(data: bytes, width: int, height: int) -> bytes:
    """The same payload claiming other dimensions (PNG IHDR with its CRC, JPEG SOF, WEBP header)."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        struct.pack_into(">II", out, 16, width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    elif data.startswith(b"\xff\xd8"):
        for marker, unit in jpeg_units(data):
            if marker in (0xC0, 0xC1, 0xC2):
                at = data.index(unit) + 5
                struct.pack_into(">HH", out, at, min(height, 0xFFFF), min(width, 0xFFFF))
                break
    elif data[12:16] == b"VP8X":
        out[24:30] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + ((height - 1) & 0xFFFFFF).to_bytes(
            3, "little"
        )
    elif data[12:16] == b"VP8L":
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        bits |= ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
        out[21:25] = bits.to_bytes(4, "little")
    return bytes(out)


def riff(chunks: list[bytes]) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 12
    while i + 8 <= len(data):
        size = struct.unpack("<I", data[i + 4 : i + 8])[0]
        out.append((data[i : i + 4], data[i : i + 8 + size + (size & 1)]))
        i += 8 + size + (size & 1)
    return out


def animated_webp(size: tuple[int, int], frames: int) -> bytes:
    """An animated WEBP: a red first frame, then ``frames - 1`` copies of a blue frame."""
    first, other = Image.new("RGB", size, (250, 0, 0)), Image.new("RGB", size, (0, 0, 250))
    two = encode(first, "WEBP", save_all=True, append_images=[other], lossless=True, duration=10)
    chunks = webp_chunks(two)
    anmf = [c for kind, c in chunks if kind == b"ANMF"]
    return riff([c for kind, c in chunks if kind != b"ANMF"] + [anmf[0]] + [anmf[1]] * (frames - 1))
