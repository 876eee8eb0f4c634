"""Worst-case cost of one image in the Triton image encoder's decode path, per class of hostile image.

    .venv/bin/python benchmarks/image_worst_case.py [--repeats 3] [--rev REV] [--out FILE] [--only TEXT]

Each sample decodes one payload with ``querylife.imaging.decode_batch([payload], 128)`` (what
``image_encoder`` runs per item) in a fresh process, after the codecs are loaded, and records wall
and CPU seconds, the peak RSS growth (Linux VmHWM, reset just before) and the outcome (a row or the
``ImageError`` reason). The child runs under an address-space cap (its size after start-up + 6 GiB)
and a timeout, so the pre-fix bombs end as ``MemoryError`` / ``timeout`` instead of taking the
machine down. ``--rev`` measures the ``querylife`` and ``schemas`` of a git revision (extracted to a
temporary directory) instead of the working tree: ``--rev 6faa3d5`` gives the figures before the
bounds (docs/reliability.md, "Bounded image preprocessing"). Prints a markdown table; writes every
sample to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from querylife.catalogue import catalogue_dir  # noqa: E402  (the repo root must be importable first)
from tests.hostile_images import (  # noqa: E402  (the repo root must be importable first)
    animated_webp,
    encode,
    patch_dimensions,
    png_chunk,
    raw_png,
    with_extra_scans,
)

CAP_GIB = 6
TIMEOUT_S = 180

_CHILD = r"""
import io, json, resource, sys, time
from PIL import Image
from querylife.imaging import decode_batch

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # KiB

for fmt in ("PNG", "JPEG", "WEBP"):  # load the codecs before measuring
    buf = io.BytesIO()
    Image.new("RGB", (256, 256)).save(buf, format=fmt)
    decode_batch([buf.getvalue()], 128)
payload = open(sys.argv[1], "rb").read()
cap = (status("VmSize") << 10) + (int(sys.argv[2]) << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from the current RSS
base = status("VmHWM")
wall, cpu = time.perf_counter(), time.process_time()
try:
    batch = decode_batch([payload], 128)
    outcome = "row" if batch.rows else batch.errors[0].reason
    detail = "" if batch.rows else batch.errors[0].message[:160]
except BaseException as exc:  # the pre-fix code let these out of decode_batch
    outcome, detail = f"raised {type(exc).__name__}", str(exc)[:160]
print(json.dumps({
    "wall_s": round(time.perf_counter() - wall, 3),
    "cpu_s": round(time.process_time() - cpu, 3),
    "peak_mib": round((status("VmHWM") - base) / 1024, 1),
    "outcome": outcome,
    "detail": detail,
}))
"""


LIMIT = 1 << 20  # the payload limit: every case fits


def _photo(size: tuple[int, int], fmt: str, **kw: object) -> bytes:
    """A smooth random picture, at the best quality that fits the 1 MiB limit (entropy decoding of
    a full 1 MiB is part of the worst case)."""
    small = [Image.effect_noise((max(1, size[0] // 24), max(1, size[1] // 24)), 80) for _ in range(3)]
    img = Image.merge("RGB", small).resize(size, Image.Resampling.BICUBIC)
    for quality in (90, 75, 60, 45, 30, 20, 10, 5):
        data = encode(img, fmt, quality=quality, **kw)
        if len(data) <= LIMIT:
            return data
    raise ValueError(f"no quality fits {size} {fmt} into {LIMIT} bytes")


def _webp_canvas(width: int, height: int) -> bytes:  # a 1 px animation on a patched canvas
    return patch_dimensions(animated_webp((1, 1), 2), width, height)


def _scans(mode: str, extra: int) -> bytes:
    colour = 128 if mode == "L" else (120, 130, 140)
    return with_extra_scans(encode(Image.new(mode, (4096, 4096), colour), "JPEG", progressive=True), extra)


def _ztxt_bomb() -> bytes:
    png = raw_png(64, 64)
    return png[:33] + png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(bytes(1 << 20), 9)) * 900 + png[33:]


def _many_chunks() -> bytes:
    png = raw_png(64, 64)
    return png[:33] + png_chunk(b"abCd", b"") * 87_000 + png[33:]


def _tiny_jpeg() -> bytes:
    return encode(Image.new("RGB", (8, 8)), "JPEG")


def _many_markers() -> bytes:
    return b"\xff\xd8" + b"\xff\xfe\x00\x02" * 261_000 + _tiny_jpeg()[2:]


def _icc_chunks() -> bytes:
    app2 = b"".join(b"\xff\xe2\xff\xfdICC_PROFILE\x00" + bytes([i + 1, 15]) + bytes(65517) for i in range(15))
    return b"\xff\xd8" + app2 + _tiny_jpeg()[2:]


def _catalogue_jpeg() -> bytes:
    images = catalogue_dir() / "images"
    first = min(images.iterdir()) if images.is_dir() else None
    return first.read_bytes() if first else encode(Image.new("RGB", (128, 128), (90, 60, 30)), "JPEG")


CASES: list[tuple[str, str, Callable[[], bytes]]] = [
    ("ordinary", "catalogue JPEG 128 x 128", _catalogue_jpeg),
    ("aspect ratio", "PNG 16,777,216 x 1", lambda: raw_png(16_777_216, 1)),
    ("aspect ratio", "PNG 1 x 16,000,000", lambda: raw_png(1, 16_000_000)),
    ("aspect ratio", "PNG 1,000,000 x 16", lambda: raw_png(1_000_000, 16)),
    ("aspect ratio", "PNG 65535 x 200", lambda: raw_png(65535, 200)),
    ("aspect ratio", "JPEG 65500 x 16", lambda: encode(Image.new("L", (65500, 16), 128), "JPEG")),
    ("aspect ratio", "WEBP 16383 x 1", lambda: encode(Image.new("RGB", (16383, 1)), "WEBP", lossless=True)),
    ("WEBP canvas", "VP8X canvas 16,777,216 x 1", lambda: _webp_canvas(1 << 24, 1)),
    ("WEBP canvas", "VP8X canvas 65535 x 65535", lambda: _webp_canvas(65535, 65535)),
    ("WEBP canvas", "VP8X canvas 4096 x 4096, 1 px frame", lambda: _webp_canvas(4096, 4096)),
    ("JPEG scans", "progressive 4096^2 gray + 17,000 scans", lambda: _scans("L", 17_000)),
    ("JPEG scans", "progressive 4096^2 RGB + 24,000 scans", lambda: _scans("RGB", 24_000)),
    ("JPEG scans", "progressive 4096^2 RGB, 10 + 90 scans", lambda: _scans("RGB", 90)),
    (
        "pixel limit",
        "PNG 4096^2 RGBA 16-bit Adam7",
        lambda: raw_png(4096, 4096, depth=16, color=6, interlace=True),
    ),
    (
        "pixel limit",
        "PNG 4096^2 palette + tRNS",
        lambda: encode(Image.new("P", (4096, 4096)), "PNG", transparency=0),
    ),
    ("pixel limit", "PNG 4096^2 gray 16-bit (I;16)", lambda: raw_png(4096, 4096, depth=16, color=0)),
    ("pixel limit", "PNG 4096^2 LA", lambda: encode(Image.new("LA", (4096, 4096), (3, 4)), "PNG")),
    (
        "pixel limit",
        "JPEG 4096^2 CMYK",
        lambda: encode(Image.new("CMYK", (4096, 4096), (1, 2, 3, 4)), "JPEG"),
    ),
    ("pixel limit", "JPEG 4096^2 progressive photo", lambda: _photo((4096, 4096), "JPEG", progressive=True)),
    ("pixel limit", "JPEG 16352 x 511 photo (no DCT scaling)", lambda: _photo((16352, 511), "JPEG")),
    ("pixel limit", "WEBP 4096^2 lossy photo", lambda: _photo((4096, 4096), "WEBP")),
    (
        "pixel limit",
        "WEBP 4096^2 lossless RGBA",
        lambda: encode(Image.new("RGBA", (4096, 4096)), "WEBP", lossless=True),
    ),
    ("frames", "animated WEBP 1024^2, 20,000 frames", lambda: animated_webp((1024, 1024), 20_000)),
    ("frames", "animated WEBP 4096^2, 2 frames", lambda: animated_webp((4096, 4096), 2)),
    ("metadata", "PNG 900 zTXt chunks of 1 MiB", _ztxt_bomb),
    ("metadata", "PNG 87,000 unknown chunks", _many_chunks),
    ("metadata", "JPEG 261,000 COM markers", _many_markers),
    ("metadata", "JPEG 15 APP2 ICC chunks (980 KB)", _icc_chunks),
]


def _code_dir(rev: str | None, tmp: Path) -> Path:
    """The directory whose querylife/ and schemas/ the children import."""
    if rev is None:
        return REPO
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "querylife", "schemas"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def _sample(code: Path, payload: Path) -> dict[str, Any]:
    env = os.environ | {"PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(payload), str(CAP_GIB)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env=env,
            cwd=code,
        )
    except subprocess.TimeoutExpired:
        return {"outcome": "timeout", "wall_s": float(TIMEOUT_S), "detail": f"killed after {TIMEOUT_S} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"outcome": f"child died (rc {proc.returncode})", "detail": proc.stderr[-300:]}
    return dict(json.loads(lines[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="samples per case (fresh process each)")
    ap.add_argument(
        "--rev", help="git revision whose querylife/ and schemas/ to measure (default: working tree)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "image_worst_case.json")
    ap.add_argument("--only", help="substring of the case names to run")
    args = ap.parse_args()
    import PIL

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        code = _code_dir(args.rev, tmp / "code")
        for kind, name, build in CASES:
            if args.only and args.only not in name:
                continue
            payload = tmp / "payload"
            data = build()
            payload.write_bytes(data)
            samples = [_sample(code, payload) for _ in range(args.repeats)]
            rows.append({"class": kind, "case": name, "bytes": len(data), "samples": samples})
            _print_row(rows[-1])
    report = {
        "what": "one decode_batch([payload], 128) per sample, fresh process, codecs loaded first",
        "code": args.rev or "working tree",
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores (shared)",
        "cap_gib_over_startup": CAP_GIB,
        "timeout_s": TIMEOUT_S,
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}")


def _print_row(row: dict[str, Any]) -> None:
    if not _printed:
        print("| class | case | bytes | outcome | wall s (median / max) | CPU s (max) | peak MiB (max) |")
        print("|---|---|---:|---|---:|---:|---:|")
        _printed.append(True)
    samples: list[dict[str, Any]] = row["samples"]

    def values(key: str) -> list[float]:
        return [float(s[key]) for s in samples if key in s]

    wall, cpu, mib = values("wall_s"), values("cpu_s"), values("peak_mib")
    outcome = ", ".join(sorted({str(s["outcome"]) for s in samples}))
    cells = [
        f"{statistics.median(wall):.2f} / {max(wall):.2f}" if wall else "-",
        f"{max(cpu):.2f}" if cpu else "-",
        f"{max(mib):.0f}" if mib else "-",
    ]
    print(
        f"| {row['class']} | {row['case']} | {row['bytes']:,} | {outcome} | {' | '.join(cells)} |", flush=True
    )


_printed: list[bool] = []


if __name__ == "__main__":
    main()
