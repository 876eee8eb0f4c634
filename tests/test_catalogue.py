"""One catalogue setting (querylife/catalogue.py) and the committed sample catalogue.

The order is --data, then $QUERYLIFE_DATA, then ../shared/data/fashion-products beside the repo;
tools that allow it fall back to data/sample-catalogue/ only when the full one is absent, never in
place of an explicit choice. The sample is what `make demo` runs on without ../shared, so it must be
complete (every image present and a JPEG), small, licensed, and exactly what its script draws.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from harness import sample
from querylife import catalogue
from querylife.catalogue import SAMPLE_CATALOGUE, resolve_catalogue, shown_path


def test_order_flag_env_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(catalogue.ENV_VAR, raising=False)
    assert resolve_catalogue().source == "full"
    assert resolve_catalogue().path == catalogue.REPO_ROOT.parent / "shared" / "data" / "fashion-products"
    monkeypatch.setenv(catalogue.ENV_VAR, str(tmp_path / "env"))
    assert resolve_catalogue() == catalogue.Catalogue(tmp_path / "env", "env")
    assert resolve_catalogue(tmp_path / "flag", allow_sample=True) == catalogue.Catalogue(
        tmp_path / "flag", "flag"
    )


def test_sample_only_when_the_full_catalogue_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(catalogue.ENV_VAR, raising=False)
    monkeypatch.setattr(catalogue, "FULL_CATALOGUE", tmp_path / "absent")
    assert resolve_catalogue().source == "full"  # training never silently trains on the sample
    chosen = resolve_catalogue(allow_sample=True)
    assert chosen.source == "sample" and chosen.path == SAMPLE_CATALOGUE and chosen.exists()
    assert chosen.describe().startswith("data/sample-catalogue (the sample committed in the repository")
    (tmp_path / "absent").mkdir()
    (tmp_path / "absent" / "products.jsonl").write_text("{}\n")
    assert resolve_catalogue(allow_sample=True).source == "full"


def test_paths_are_shown_relative_to_the_repository() -> None:
    assert shown_path(SAMPLE_CATALOGUE) == "data/sample-catalogue"
    assert shown_path(catalogue.REPO_ROOT.parent / "shared" / "data") == "../shared/data"


def test_the_committed_sample_is_complete_small_and_licensed() -> None:
    rows = [orjson.loads(line) for line in (SAMPLE_CATALOGUE / "products.jsonl").read_bytes().splitlines()]
    assert len(rows) == 300 and len({r["product_id"] for r in rows}) == 300
    images = {p.name: p for p in (SAMPLE_CATALOGUE / "images").iterdir()}
    assert set(images) == {r["image_path"] for r in rows}
    assert all(p.read_bytes()[:3] == b"\xff\xd8\xff" for p in images.values())
    total = sum(p.stat().st_size for p in SAMPLE_CATALOGUE.rglob("*") if p.is_file())
    assert total < 4 * 2**20, f"the sample grew to {total} bytes"
    assert (SAMPLE_CATALOGUE / "LICENSE").read_text().startswith("MIT License")
    assert "seed 0" in (SAMPLE_CATALOGUE / "README.md").read_text()


def test_the_sample_script_redraws_the_committed_sample(tmp_path: Path) -> None:
    full = catalogue.FULL_CATALOGUE
    if not (full / "products.jsonl").exists():
        pytest.skip("the full catalogue is absent: nothing to draw from")
    args = argparse.Namespace(source=full, out=tmp_path / "s", count=300, seed=0)
    assert sample.run(args) == 0
    for name in ("products.jsonl", "LICENSE", "README.md"):
        assert (tmp_path / "s" / name).read_bytes() == (SAMPLE_CATALOGUE / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "s" / "images").iterdir()) == sorted(
        p.name for p in (SAMPLE_CATALOGUE / "images").iterdir()
    )
