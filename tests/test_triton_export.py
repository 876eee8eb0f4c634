"""`querylife export` (no server): checkpoint copies, version stamps, refusals; the committed layout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from querylife.checkpoint import DEFAULT_DIR, META_FILE, WEIGHTS_FILE
from querylife.export import (
    SOURCE_REPOSITORY,
    UNEXPORTED_HINT,
    ExportError,
    export,
    export_cli,
    model_configs,
    read_stamp,
)

PYTHON_MODELS = {"text_encoder", "image_encoder", "fusion", "relevance"}
ENSEMBLES = {"product_embedding", "query_relevance"}


def committed_version() -> str:
    import json

    return str(json.loads((DEFAULT_DIR / META_FILE).read_text())["version"])


def test_committed_layout_is_complete_and_unexported() -> None:
    models = {p.parent.name for p in SOURCE_REPOSITORY.glob("*/config.pbtxt")}
    assert models == PYTHON_MODELS | ENSEMBLES
    for name in models:
        configs = model_configs(SOURCE_REPOSITORY / name)
        assert [c.relative_to(SOURCE_REPOSITORY / name).as_posix() for c in configs] == [
            "config.pbtxt",
            "configs/gpu.pbtxt",
        ]
        for cfg in configs:
            text = cfg.read_text()
            assert read_stamp(text) == UNEXPORTED_HINT, cfg
            assert f'name: "{name}"' in text
            if name in PYTHON_MODELS:
                assert "dynamic_batching" in text and "max_queue_delay_microseconds" in text
                assert ("KIND_GPU" in text) == (cfg.name == "gpu.pbtxt")
        assert (SOURCE_REPOSITORY / name / "1").is_dir()
        if name in PYTHON_MODELS:
            assert (SOURCE_REPOSITORY / name / "1" / "model.py").is_file()


def test_exported_checkpoints_are_gitignored() -> None:
    repo = SOURCE_REPOSITORY.parent
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    probe = "model_repository/text_encoder/1/checkpoint/head.pt"
    res = subprocess.run(["git", "check-ignore", "-q", probe], cwd=repo, check=False)
    assert res.returncode == 0, f"{probe} is not ignored by .gitignore"


def test_export_copies_head_and_stamps_every_config(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    shutil.copytree(SOURCE_REPOSITORY, out)
    result = export(None, out)
    assert result.version == committed_version()
    assert set(result.python_models) == PYTHON_MODELS
    for name in PYTHON_MODELS:
        ckpt = out / name / "1" / "checkpoint"
        assert (ckpt / WEIGHTS_FILE).read_bytes() == (DEFAULT_DIR / WEIGHTS_FILE).read_bytes()
        assert (ckpt / META_FILE).read_bytes() == (DEFAULT_DIR / META_FILE).read_bytes()
    for name in PYTHON_MODELS | ENSEMBLES:
        for cfg in model_configs(out / name):
            assert read_stamp(cfg.read_text()) == result.version
    assert not (out / "product_embedding" / "1" / "checkpoint").exists()
    # idempotent, and the source tree is untouched
    assert export(None, out).version == result.version
    for cfg in SOURCE_REPOSITORY.glob("*/config.pbtxt"):
        assert read_stamp(cfg.read_text()) == UNEXPORTED_HINT


def test_export_into_an_empty_directory_copies_the_layout(tmp_path: Path) -> None:
    assert export_cli(["--out", str(tmp_path / "fresh")]) == 0
    assert (tmp_path / "fresh" / "fusion" / "1" / "checkpoint" / WEIGHTS_FILE).is_file()


def test_export_refuses_a_tampered_or_missing_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    shutil.copytree(SOURCE_REPOSITORY, out)
    bad = tmp_path / "bad"
    shutil.copytree(DEFAULT_DIR, bad)
    state = torch.load(bad / WEIGHTS_FILE, weights_only=True)
    first = sorted(state)[0]
    state[first] = state[first] + 1.0
    torch.save(state, bad / WEIGHTS_FILE)
    with pytest.raises(ExportError, match="sha256"):
        export(bad, out)
    with pytest.raises(ExportError, match="missing"):
        export(tmp_path / "nowhere", out)
    assert export_cli(["--checkpoint", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    for cfg in out.glob("*/config.pbtxt"):
        assert read_stamp(cfg.read_text()) == UNEXPORTED_HINT


def test_export_refuses_a_config_without_a_version_parameter(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    shutil.copytree(SOURCE_REPOSITORY, out)
    cfg = out / "relevance" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("querylife_version", "other_key"))
    with pytest.raises(ExportError, match="querylife_version"):
        export(None, out)
