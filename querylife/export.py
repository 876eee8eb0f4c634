"""`querylife export`: put a head checkpoint into the Triton model repository and stamp its version.

For every python-backend model in the repository (``backend: "python"``) the checkpoint's
``head.pt`` + ``head.json`` are copied to ``<out>/<model>/<version>/checkpoint/`` (gitignored), and
every model's config (``config.pbtxt`` and ``configs/*.pbtxt``, ensembles included) gets
``parameters { key: "querylife_version" value: { string_value: "<version>" } }``. The python models
refuse to load when the stamp and the checkpoint disagree, and the client reads the stamp back from
the ensembles' configs (``RelevanceClient.model_version()``). The frozen towers are not copied: they
come from pip packages in the Triton image. Large weights never enter git; the head is ~2 MB.

    querylife export [--checkpoint DIR] [--out model_repository] [--triton-version 1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from querylife.checkpoint import DEFAULT_DIR, META_FILE, WEIGHTS_FILE, load_head

SOURCE_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
VERSION_KEY = "querylife_version"
UNEXPORTED_HINT = "unexported"  # the committed configs' value: a server cannot load it
CHECKPOINT_DIRNAME = "checkpoint"
_STAMP = re.compile(r'(key:\s*"querylife_version"\s*value:\s*\{\s*string_value:\s*")([^"]*)(")')
_PYTHON_BACKEND = re.compile(r'^\s*backend:\s*"python"', re.MULTILINE)


class ExportError(RuntimeError):
    """The checkpoint or the model repository is not usable; the message says what to fix."""


@dataclass(frozen=True)
class ExportResult:
    version: str
    embed_dim: int
    python_models: list[str]
    stamped_configs: list[Path]


def model_configs(model_dir: Path) -> list[Path]:
    """The default config and every named variant (``configs/<name>.pbtxt``) of one model."""
    configs = [model_dir / "config.pbtxt"]
    if (model_dir / "configs").is_dir():
        configs += sorted((model_dir / "configs").glob("*.pbtxt"))
    return [c for c in configs if c.is_file()]


def stamp_config(text: str, version: str) -> str:
    """Replace the ``querylife_version`` parameter's value; every config must declare it."""
    stamped, count = _STAMP.subn(lambda m: f"{m.group(1)}{version}{m.group(3)}", text)
    if count != 1:
        raise ExportError(f'expected exactly one "{VERSION_KEY}" parameter, found {count}')
    return stamped


def read_stamp(text: str) -> str | None:
    match = _STAMP.search(text)
    return match.group(2) if match else None


def _copy_checkpoint(src: Path, dest: Path) -> None:
    """Replace ``dest`` with the two checkpoint files, via a sibling temp dir and a rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=dest.parent))
    try:
        for name in (WEIGHTS_FILE, META_FILE):
            shutil.copy2(src / name, tmp / name)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def export(checkpoint: Path | None, out: Path, triton_version: int = 1) -> ExportResult:
    src = Path(checkpoint) if checkpoint is not None else DEFAULT_DIR
    for name in (WEIGHTS_FILE, META_FILE):
        if not (src / name).is_file():
            raise ExportError(f"{src} is not a head checkpoint: {name} is missing")
    try:
        head, _, meta = load_head(src)  # verifies the weights' sha256 against head.json
    except Exception as exc:  # sha mismatch, unreadable weights, bad metadata
        raise ExportError(f"cannot load the head checkpoint in {src}: {exc}") from exc
    version = str(meta["version"])
    embed_dim = int(head.config["embed_dim"])

    out = Path(out)
    if not any(out.glob("*/config.pbtxt")):
        if out.resolve() == SOURCE_REPOSITORY.resolve() or not SOURCE_REPOSITORY.is_dir():
            raise ExportError(f"{out} holds no Triton models (no */config.pbtxt)")
        shutil.copytree(SOURCE_REPOSITORY, out, dirs_exist_ok=True)

    # validate everything before writing anything: a refused export leaves the repository as it was
    python_models: list[str] = []
    updates: dict[Path, str] = {}
    for model_dir in sorted(p.parent for p in out.glob("*/config.pbtxt")):
        configs = model_configs(model_dir)
        for cfg in configs:
            text = cfg.read_text()
            if "EMBEDDING" in text and f"dims: [ {embed_dim} ]" not in text:
                raise ExportError(f"{cfg}: embedding dims differ from the checkpoint embed_dim {embed_dim}")
            try:
                updates[cfg] = stamp_config(text, version)
            except ExportError as exc:
                raise ExportError(f"{cfg}: {exc}") from None
        if _PYTHON_BACKEND.search((model_dir / "config.pbtxt").read_text()):
            if not (model_dir / str(triton_version) / "model.py").is_file():
                raise ExportError(f"{model_dir}/{triton_version}/model.py is missing")
            python_models.append(model_dir.name)
    if not python_models:
        raise ExportError(f"{out} holds no python-backend models")
    for name in python_models:
        _copy_checkpoint(src, out / name / str(triton_version) / CHECKPOINT_DIRNAME)
    for cfg, text in updates.items():
        if cfg.read_text() != text:
            cfg.write_text(text)
    stamped = list(updates)
    return ExportResult(version, embed_dim, python_models, stamped)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="querylife export",
        description="Copy a head checkpoint into the Triton model repository and stamp its version.",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help=f"head checkpoint directory (default: {DEFAULT_DIR})"
    )
    parser.add_argument(
        "--out", type=Path, default=SOURCE_REPOSITORY, help="Triton model repository (default: %(default)s)"
    )
    parser.add_argument("--triton-version", type=int, default=1, help="model version directory (default: 1)")
    return parser


def export_main(argv: list[str] | None = None) -> int:
    """CLI entry; raises ExportError (callers such as test fixtures must not start on a half export)."""
    args = build_parser().parse_args(argv)
    result = export(args.checkpoint, args.out, args.triton_version)
    print(
        f"exported {result.version} (embed_dim {result.embed_dim}) into {args.out}: "
        f"checkpoint -> {', '.join(result.python_models)}; stamped {len(result.stamped_configs)} configs"
    )
    return 0


def export_cli(argv: list[str]) -> int:
    """`querylife export` subcommand: 0 on success, 1 (with the reason on stderr) on a refused export."""
    try:
        return export_main(argv)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(export_cli(sys.argv[1:]))
