"""The declared A/B experiments (`QL_WORKER_EXPERIMENTS_FILE`): read and validated once, at start.

A declaration names the randomisation unit the worker counts by; a mistake in it would silently
count every search of the experiment by the wrong unit, so a bad file stops the worker at start
with the field at fault rather than being guessed at.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from schemas import Experiment

_LIST = TypeAdapter(list[Experiment])
MAX_EXPERIMENTS = 256
"""A declaration file is written by analysts, not traffic; a bound keeps a wrong file from being huge."""


class ExperimentsError(ValueError):
    """The experiments file cannot be used; the message names the file and what is wrong."""


def parse_experiments(text: str | bytes, where: str = "<experiments>") -> dict[str, Experiment]:
    """`Experiment` declarations from a JSON list, by id; ids must be unique."""
    try:
        experiments = _LIST.validate_json(text)
    except ValidationError as exc:
        raise ExperimentsError(f"{where}: {exc}") from exc
    if len(experiments) > MAX_EXPERIMENTS:
        raise ExperimentsError(f"{where}: {len(experiments)} experiments, at most {MAX_EXPERIMENTS}")
    by_id: dict[str, Experiment] = {}
    for exp in experiments:
        if exp.experiment_id in by_id:
            raise ExperimentsError(f"{where}: experiment {exp.experiment_id!r} is declared twice")
        by_id[exp.experiment_id] = exp
    return by_id


def load_experiments(path: Path | None) -> dict[str, Experiment]:
    """The experiments declared in `path` (none when unset)."""
    if path is None:
        return {}
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ExperimentsError(f"QL_WORKER_EXPERIMENTS_FILE={path}: {exc.strerror or exc}") from exc
    return parse_experiments(text, f"QL_WORKER_EXPERIMENTS_FILE={path}")
