"""Turn an event's image reference into bytes, without leaving the configured image root."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from schemas import LIMITS, EventError, ProductImage
from schemas.events import sniff_image_format


def resolve_image(image: ProductImage | None, image_root: Path | None) -> bytes | None:
    """Inline bytes as they are; a path only if it resolves (symlinks included) inside `image_root`."""
    if image is None:
        return None
    if image.data is not None:
        return image.data
    assert image.path is not None  # the schema guarantees exactly one source
    if image_root is None:
        raise EventError(
            "image_path_disabled", "image paths are not accepted: no image root configured", "image.path"
        )
    root = image_root.resolve()
    target = (root / image.path).resolve()
    if not target.is_relative_to(root):
        raise EventError("path_traversal", "image path resolves outside the image root", "image.path")
    try:
        fd = os.open(
            target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        )  # a FIFO must not block us
    except FileNotFoundError:
        raise EventError("image_not_found", f"no image at {image.path!r}", "image.path") from None
    except OSError as exc:
        raise EventError(
            "image_unreadable", f"cannot open {image.path!r}: {exc.strerror}", "image.path"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise EventError("image_unreadable", f"{image.path!r} is not a regular file", "image.path")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > LIMITS.max_image_bytes:
            raise EventError(
                "image_too_large", f"image file exceeds {LIMITS.max_image_bytes} bytes", "image.path"
            )
        data = fh.read(LIMITS.max_image_bytes + 1)
    fmt = sniff_image_format(data)
    if fmt is None or fmt not in LIMITS.allowed_image_formats:
        raise EventError("unsupported_image_format", f"{image.path!r} is not JPEG, PNG or WEBP", "image.path")
    return data
