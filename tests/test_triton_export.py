"""`querylife export` (no server): versions side by side, pinned ensembles, refusals, retire."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from querylife.checkpoint import DEFAULT_DIR, META_FILE, WEIGHTS_FILE
from querylife.export import (
    ENSEMBLE_TEMPLATES,
    SOURCE_REPOSITORY,
    ExportError,
    export,
    export_cli,
    exported_versions,
    model_configs,
    retire,
)

PYTHON_MODELS = {"text_encoder", "image_encoder", "fusion", "relevance"}
ENSEMBLES = {"product_embedding", "query_relevance"}
CANDIDATE = Path(__file__).resolve().parent / "fixtures" / "head-seed1"  # the same head, seed 1


def version_of(checkpoint: Path) -> str:
    return str(json.loads((checkpoint / META_FILE).read_text())["version"])


def test_committed_layout_holds_code_and_templates_only() -> None:
    models = {p.parent.name for p in SOURCE_REPOSITORY.glob("*/config.pbtxt")}
    assert models == PYTHON_MODELS  # ensembles exist per exported version only
    assert {t.stem for t in ENSEMBLE_TEMPLATES.glob("*.pbtxt")} == ENSEMBLES
    for name in models:
        configs = model_configs(SOURCE_REPOSITORY / name)
        assert [c.relative_to(SOURCE_REPOSITORY / name).as_posix() for c in configs] == [
            "config.pbtxt",
            "configs/gpu.pbtxt",
        ]
        for cfg in configs:
            text = cfg.read_text()
            assert "querylife_version" not in text, cfg  # the version lives with the weights
            assert "version_policy: { all { } }" in text, cfg
            assert f'name: "{name}"' in text
            assert "dynamic_batching" in text and "max_queue_delay_microseconds" in text
            assert ("KIND_GPU" in text) == (cfg.name == "gpu.pbtxt")
        assert (SOURCE_REPOSITORY / name / "1" / "model.py").is_file()
    for template in ENSEMBLE_TEMPLATES.glob("*.pbtxt"):
        assert "model_version: -1" not in template.read_text()  # never "the latest"


def test_exported_checkpoints_and_ensembles_are_gitignored() -> None:
    repo = SOURCE_REPOSITORY.parent
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    for probe in (
        "model_repository/text_encoder/1/checkpoint/head.pt",
        "model_repository/text_encoder/2/model.py",
        "model_repository/query_relevance.querylife-v1-0123456789/config.pbtxt",
    ):
        res = subprocess.run(["git", "check-ignore", "-q", probe], cwd=repo, check=False)
        assert res.returncode == 0, f"{probe} is not ignored by .gitignore"


def test_two_versions_side_by_side_each_ensemble_pinned(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    first = export(None, out)  # an empty directory gets the layout first
    assert (first.version, first.triton_version) == (version_of(DEFAULT_DIR), 1)
    second = export(CANDIDATE, out)
    assert (second.version, second.triton_version) == (version_of(CANDIDATE), 2)
    assert first.version != second.version
    for name in PYTHON_MODELS:
        assert exported_versions(out / name) == {1: first.version, 2: second.version}
        ckpt = out / name / "2" / "checkpoint"
        assert (ckpt / WEIGHTS_FILE).read_bytes() == (CANDIDATE / WEIGHTS_FILE).read_bytes()
        code = (out / name / "2" / "model.py").read_text()
        assert code == (SOURCE_REPOSITORY / name / "1" / "model.py").read_text()
    for result in (first, second):
        for ensemble in ENSEMBLES:
            text = (out / f"{ensemble}.{result.version}" / "config.pbtxt").read_text()
            assert f'name: "{ensemble}.{result.version}"' in text
            assert text.count(f"model_version: {result.triton_version}\n") == text.count("model_name:")
            assert f'string_value: "{result.version}"' in text
            assert (out / f"{ensemble}.{result.version}" / "1").is_dir()
    # a re-export is idempotent: same directory, nothing else moves
    again = export(CANDIDATE, out)
    assert again.triton_version == 2 and exported_versions(out / "fusion") == {
        1: first.version,
        2: second.version,
    }
    # retire removes one version and leaves the other whole
    removed = retire(first.version, out)
    assert len(removed) == len(PYTHON_MODELS) + len(ENSEMBLES)
    assert exported_versions(out / "fusion") == {2: second.version}
    assert not (out / f"query_relevance.{first.version}").exists()
    assert (SOURCE_REPOSITORY / "fusion" / "1" / "model.py").is_file()  # the source tree is untouched
    assert not any(SOURCE_REPOSITORY.glob("query_relevance.*"))


def test_export_never_overwrites_another_versions_directory(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    export(None, out)
    with pytest.raises(ExportError, match="holds"):
        export(CANDIDATE, out, triton_version=1)
    with pytest.raises(ExportError, match="already exported as version 1"):
        export(None, out, triton_version=3)
    assert exported_versions(out / "relevance") == {1: version_of(DEFAULT_DIR)}


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
    assert not any(out.glob("*/[0-9]*/checkpoint"))  # a refused export writes nothing
    assert export_cli(["--retire", "never-exported", "--out", str(out)]) == 1


def test_export_refuses_an_embedding_width_the_configs_do_not_declare(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    shutil.copytree(SOURCE_REPOSITORY, out)
    cfg = out / "relevance" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: [ 256 ]", "dims: [ 128 ]"))
    with pytest.raises(ExportError, match="embedding dims"):
        export(None, out)
