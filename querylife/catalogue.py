"""Where the product catalogue is: the one place that decides it (no torch, so every CLI can import it).

Order: an explicit path (a `--data` flag), then `$QUERYLIFE_DATA`, then the full catalogue beside the
repository (`../shared/data/fashion-products`, relative to the repository root, never an absolute
machine path). Tools that only need *some* catalogue (the demo, demo traffic) may fall back to the
small sample committed in `data/sample-catalogue/` when the full one is absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "QUERYLIFE_DATA"
FULL_CATALOGUE = REPO_ROOT.parent / "shared" / "data" / "fashion-products"
SAMPLE_CATALOGUE = REPO_ROOT / "data" / "sample-catalogue"
PRODUCTS_FILE = "products.jsonl"

Source = Literal["flag", "env", "full", "sample"]
FLAG_HELP = (
    f"catalogue folder (products.jsonl + images/); default: ${ENV_VAR}, else "
    "../shared/data/fashion-products, else the sample in data/sample-catalogue"
)


@dataclass(frozen=True)
class Catalogue:
    """A catalogue folder (`products.jsonl` + `images/`) and why it was chosen."""

    path: Path
    source: Source

    @property
    def products(self) -> Path:
        return self.path / PRODUCTS_FILE

    @property
    def images(self) -> Path:
        return self.path / "images"

    def exists(self) -> bool:
        return self.products.is_file()

    def describe(self) -> str:
        why = {
            "flag": "given with --data",
            "env": f"from ${ENV_VAR}",
            "full": "the full catalogue beside the repository",
            "sample": "the sample committed in the repository; the full catalogue is absent",
        }[self.source]
        return f"{shown_path(self.path)} ({why})"


def shown_path(path: Path) -> str:
    """A path relative to the repository when it is inside or beside it, for messages and reports."""
    full = Path(os.path.abspath(path))  # not resolve(): a symlinked ../shared stays ../shared
    for base, prefix in ((REPO_ROOT, ""), (REPO_ROOT.parent, "../")):
        if full.is_relative_to(base):
            return prefix + str(full.relative_to(base))
    return str(path)


def resolve_catalogue(flag: Path | None = None, allow_sample: bool = False) -> Catalogue:
    """The catalogue to use: `flag`, else `$QUERYLIFE_DATA`, else the full one, else (when allowed and
    the full one is absent) the committed sample. An explicit choice is never replaced by the sample."""
    if flag is not None:
        return Catalogue(Path(flag), "flag")
    env = os.environ.get(ENV_VAR)
    if env:
        return Catalogue(Path(env), "env")
    full = Catalogue(FULL_CATALOGUE, "full")
    if allow_sample and not full.exists():
        return Catalogue(SAMPLE_CATALOGUE, "sample")
    return full


def catalogue_dir() -> Path:
    """The default catalogue folder for training and evaluation (no sample fallback)."""
    return resolve_catalogue().path
