"""Image references never leave the image root and never fetch anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemas import EventError, ProductImage
from worker.images import resolve_image

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "ok.jpg").write_bytes(JPEG)
    (images / "sub" / "deep.jpg").write_bytes(JPEG)
    (images / "fake.jpg").write_bytes(b"GIF89a" + b"\x00" * 10)
    (tmp_path / "secret.jpg").write_bytes(JPEG)
    os.symlink(tmp_path / "secret.jpg", images / "escape.jpg")
    os.mkfifo(images / "pipe.jpg")
    return images


def test_inline_and_relative_paths_resolve(root: Path) -> None:
    assert resolve_image(ProductImage(data=JPEG), None) == JPEG
    assert resolve_image(ProductImage(path="ok.jpg"), root) == JPEG
    assert resolve_image(ProductImage(path="sub/deep.jpg"), root) == JPEG
    assert resolve_image(None, root) is None


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("escape.jpg", "path_traversal"),
        ("missing.jpg", "image_not_found"),
        ("fake.jpg", "unsupported_image_format"),
        ("sub", "image_unreadable"),
        ("pipe.jpg", "image_unreadable"),
    ],
)
def test_hostile_paths_are_rejected(root: Path, path: str, reason: str) -> None:
    with pytest.raises(EventError) as info:
        resolve_image(ProductImage(path=path), root)
    assert info.value.reason == reason


def test_paths_need_a_configured_root() -> None:
    with pytest.raises(EventError) as info:
        resolve_image(ProductImage(path="ok.jpg"), None)
    assert info.value.reason == "image_path_disabled"
