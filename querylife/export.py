"""`querylife export`: add one Query-LIFE version to a Triton model repository, beside the others.

A version is self-contained, so Triton can serve version N and N+1 side by side during a rollout
(docs/deploying.md "Model upgrade"):
- every python-backend model gets a version directory ``<model>/<N>/`` holding its code
  (``model.py``, copied from this repository's ``model_repository/<model>/1/`` when the directory is
  new) and the head checkpoint (``checkpoint/head.pt`` + ``head.json``: the weights name their own
  Query-LIFE version, nothing in the shared ``config.pbtxt`` does); their configs serve every
  version directory (``version_policy: { all { } }``);
- every ensemble of ``querylife/ensembles/`` becomes ``<ensemble>.<model_version>/`` with each step
  pinned to ``N``, and the Query-LIFE version and N in its parameters. The worker asks for the
  ensemble of the version it serves by name, so nothing ever routes to "the latest".

N is the directory that already holds this version (a re-export replaces its checkpoint), else one
above the highest exported directory. An existing version directory of another version is never
overwritten. Large weights never enter git; the head is ~2 MB; the frozen towers come from pip.

    querylife export [--checkpoint DIR] [--out model_repository] [--triton-version N]
    querylife export --retire MODEL_VERSION [--out model_repository]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from string import Template

from querylife.checkpoint import DEFAULT_DIR, META_FILE, WEIGHTS_FILE, load_head
from schemas.base import MODEL_VERSION_PATTERN

SOURCE_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
ENSEMBLE_TEMPLATES = Path(__file__).resolve().parent / "ensembles"
CHECKPOINT_DIRNAME = "checkpoint"
SOURCE_VERSION_DIR = "1"  # where this repository keeps each python model's code
_PYTHON_BACKEND = re.compile(r'^\s*backend:\s*"python"', re.MULTILINE)
_MODEL_VERSION = re.compile(MODEL_VERSION_PATTERN)


class ExportError(RuntimeError):
    """The checkpoint or the model repository is not usable; the message says what to fix."""


@dataclass(frozen=True)
class ExportResult:
    version: str
    embed_dim: int
    triton_version: int
    python_models: list[str]
    ensembles: list[str]


def ensemble_names(version: str) -> list[str]:
    """The Triton model names of one Query-LIFE version's ensembles."""
    return [f"{template.stem}.{version}" for template in sorted(ENSEMBLE_TEMPLATES.glob("*.pbtxt"))]


def python_models(repository: Path) -> list[Path]:
    return sorted(
        cfg.parent for cfg in repository.glob("*/config.pbtxt") if _PYTHON_BACKEND.search(cfg.read_text())
    )


def model_configs(model_dir: Path) -> list[Path]:
    """The default config and every named variant (``configs/<name>.pbtxt``) of one model."""
    configs = [model_dir / "config.pbtxt"]
    if (model_dir / "configs").is_dir():
        configs += sorted((model_dir / "configs").glob("*.pbtxt"))
    return [c for c in configs if c.is_file()]


def exported_versions(model_dir: Path) -> dict[int, str]:
    """Triton version directory -> the Query-LIFE version its checkpoint holds."""
    found: dict[int, str] = {}
    for meta in model_dir.glob(f"[0-9]*/{CHECKPOINT_DIRNAME}/{META_FILE}"):
        found[int(meta.parents[1].name)] = str(json.loads(meta.read_text())["version"])
    return found


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


def _choose_version_dir(models: list[Path], version: str, requested: int | None) -> int:
    """The directory for `version`: where it already is, else `requested`, else one above the highest."""
    per_model = [exported_versions(m) for m in models]
    if any(p != per_model[0] for p in per_model):
        found = {m.name: p for m, p in zip(models, per_model, strict=True)}
        raise ExportError(f"python models hold different versions: {found}")
    exported = per_model[0]
    where = [n for n, v in exported.items() if v == version]
    if where and requested not in (None, where[0]):
        raise ExportError(f"{version} is already exported as version {where[0]}")
    n = where[0] if where else requested if requested is not None else max(exported, default=0) + 1
    if n < 1:
        raise ExportError(f"Triton version directories start at 1, not {n}")
    if exported.get(n, version) != version:
        raise ExportError(f"version directory {n} holds {exported[n]}: retire it or pass --triton-version")
    return n


def _check_dims(models: list[Path], embed_dim: int) -> None:
    for model_dir in models:
        for cfg in model_configs(model_dir):
            text = cfg.read_text()
            if "EMBEDDING" in text and f"dims: [ {embed_dim} ]" not in text:
                raise ExportError(f"{cfg}: embedding dims differ from the checkpoint embed_dim {embed_dim}")


def _write_model_code(model_dir: Path, n: int) -> None:
    """A new version directory gets this repository's code for the model (N keeps the code it had)."""
    target = model_dir / str(n) / "model.py"
    source = SOURCE_REPOSITORY / model_dir.name / SOURCE_VERSION_DIR / "model.py"
    if target.is_file():
        return
    if not source.is_file():
        raise ExportError(f"{source} is missing: no code for {model_dir.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _write_ensembles(out: Path, version: str, n: int, embed_dim: int) -> list[str]:
    names: list[str] = []
    for template in sorted(ENSEMBLE_TEMPLATES.glob("*.pbtxt")):
        text = Template(template.read_text()).substitute(model_version=version, triton_version=n)
        if f"dims: [ {embed_dim} ]" not in text:
            raise ExportError(f"{template}: embedding dims differ from the checkpoint embed_dim {embed_dim}")
        target = out / f"{template.stem}.{version}"
        (target / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs a version directory
        (target / "config.pbtxt").write_text(text)
        names.append(target.name)
    return names


def export(checkpoint: Path | None, out: Path, triton_version: int | None = None) -> ExportResult:
    src = Path(checkpoint) if checkpoint is not None else DEFAULT_DIR
    for name in (WEIGHTS_FILE, META_FILE):
        if not (src / name).is_file():
            raise ExportError(f"{src} is not a head checkpoint: {name} is missing")
    try:
        head, _, meta = load_head(src)  # verifies the weights' sha256 against head.json
    except Exception as exc:  # sha mismatch, unreadable weights, bad metadata
        raise ExportError(f"cannot load the head checkpoint in {src}: {exc}") from exc
    version = str(meta["version"])
    if len(version) > 64 or not _MODEL_VERSION.match(version):
        raise ExportError(f"model version {version!r} does not match {MODEL_VERSION_PATTERN} (max 64)")
    embed_dim = int(head.config["embed_dim"])

    out = Path(out)
    if not python_models(out):
        if out.resolve() == SOURCE_REPOSITORY.resolve() or not SOURCE_REPOSITORY.is_dir():
            raise ExportError(f"{out} holds no python-backend Triton models")
        shutil.copytree(SOURCE_REPOSITORY, out, dirs_exist_ok=True)
    models = python_models(out)
    # validate everything before writing anything: a refused export leaves the repository as it was
    _check_dims(models, embed_dim)
    n = _choose_version_dir(models, version, triton_version)
    for model_dir in models:
        _write_model_code(model_dir, n)
        _copy_checkpoint(src, model_dir / str(n) / CHECKPOINT_DIRNAME)
    ensembles = _write_ensembles(out, version, n, embed_dim)
    return ExportResult(version, embed_dim, n, [m.name for m in models], ensembles)


def retire(version: str, out: Path) -> list[Path]:
    """Remove one version's ensembles and version directories (after Triton unloaded them)."""
    removed: list[Path] = [out / name for name in ensemble_names(version) if (out / name).is_dir()]
    for model_dir in python_models(out):
        removed += [model_dir / str(n) for n, v in exported_versions(model_dir).items() if v == version]
    if not removed:
        raise ExportError(f"{version} is not exported in {out}")
    for path in removed:
        shutil.rmtree(path)
    return removed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="querylife export",
        description="Add a head checkpoint to a Triton model repository as a new version, beside the others.",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help=f"head checkpoint directory (default: {DEFAULT_DIR})"
    )
    parser.add_argument(
        "--out", type=Path, default=SOURCE_REPOSITORY, help="Triton model repository (default: %(default)s)"
    )
    parser.add_argument(
        "--triton-version",
        type=int,
        default=None,
        help="version directory (default: where this version already is, else one above the highest)",
    )
    parser.add_argument(
        "--retire", metavar="MODEL_VERSION", default=None, help="remove this version instead of exporting"
    )
    return parser


def export_main(argv: list[str] | None = None) -> int:
    """CLI entry; raises ExportError (callers such as test fixtures must not start on a half export)."""
    args = build_parser().parse_args(argv)
    if args.retire:
        removed = retire(args.retire, args.out)
        print(f"retired {args.retire} from {args.out}: removed {', '.join(str(p) for p in removed)}")
        return 0
    result = export(args.checkpoint, args.out, args.triton_version)
    print(
        f"exported {result.version} (embed_dim {result.embed_dim}) into {args.out} as version "
        f"{result.triton_version} of {', '.join(result.python_models)}; "
        f"ensembles {', '.join(result.ensembles)}"
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
