"""A contact sheet a person can look at (#22 item 6): for a sample of hand-written queries, the top
products of two heads side by side, each with its image, title, cosine score and rubric label."""

from __future__ import annotations

import io
import random
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from querylife.checkpoint import Head
from querylife.handqueries import HandQuery
from querylife.splits import SplitData, split_similarities

GRADE_NAMES = ("irrelevant", "partial", "relevant", "exact")
GRADE_COLOURS = ("tab:red", "tab:orange", "tab:blue", "tab:green")


def sample_queries(queries: Sequence[HandQuery], n: int, seed: int = 0) -> list[HandQuery]:
    """A seeded sample, one query per kind first so colour, brand, style... all appear."""
    rng = random.Random(seed)
    by_kind: dict[str, list[HandQuery]] = {}
    for q in queries:
        by_kind.setdefault(q.kind, []).append(q)
    picked = [rng.choice(by_kind[k]) for k in sorted(by_kind)]
    rng.shuffle(picked)
    rest = [q for q in queries if q not in picked]
    return (picked + rng.sample(rest, max(0, min(n - len(picked), len(rest)))))[:n]


def _thumb(images_dir: Path, product: dict[str, object]) -> np.ndarray:
    path = images_dir / str(product.get("image_path") or f"{product['product_id']}.jpg")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((60, 80)))
    except OSError:
        return np.full((80, 60, 3), 220, dtype=np.uint8)


def top_products(head: Head, split: SplitData, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (within the split) and cosine scores of each query's top ``k`` products."""
    sims = split_similarities(head, split).numpy()
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(sims, top, axis=1)


def write_contact_sheet(
    split: SplitData, heads: dict[str, Head], images_dir: Path, path: Path, k: int = 5
) -> None:
    """One row per (query, head): the head's top ``k`` test products for the query."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grades = split.grades()
    ranked = {name: top_products(h, split, k) for name, h in heads.items()}
    rows = [(qi, name) for qi in range(len(split.queries)) for name in heads]
    fig, axes = plt.subplots(len(rows), k, figsize=(1.55 * k + 1.6, 1.55 * len(rows)), squeeze=False)
    for r, (qi, name) in enumerate(rows):
        top, scores = ranked[name]
        axes[r][0].set_ylabel(f'"{split.queries[qi].text}"\n{name}', fontsize=6.5, rotation=0, ha="right")
        for c in range(k):
            ax = axes[r][c]
            j = int(top[qi, c])
            g = int(grades[qi, j])
            ax.imshow(_thumb(images_dir, split.products[j]))
            title = textwrap.shorten(str(split.products[j].get("title") or ""), 34, placeholder="…")
            ax.set_title(
                f"{textwrap.fill(title, 22)}\n{scores[qi, c]:.3f} {GRADE_NAMES[g]}",
                fontsize=5.5,
                color=GRADE_COLOURS[g],
            )
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_edgecolor(GRADE_COLOURS[g])
                side.set_linewidth(1.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80)
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:  # a 256-colour palette: a third of the size, still legible
        im.convert("RGB").quantize(256).save(path, optimize=True)
