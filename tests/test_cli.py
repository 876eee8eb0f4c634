"""The three CLIs (qlworker, qlharness, querylife): argparse subcommands, help text on every flag,
`--version` and `--log-level` on each, and the delegated querylife subcommands parsed by their owners."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import pytest

import harness.cli
import querylife.cli
import worker.cli
from querylife import export

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "qlworker": worker.cli.build_parser,
    "qlharness": harness.cli.build_parser,
    "querylife": querylife.cli.build_parser,
}
MAINS = {"qlworker": worker.cli.main, "qlharness": harness.cli.main, "querylife": querylife.cli.main}


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_flag_has_help_text(prog: str) -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in _parsers(PARSERS[prog](), prog)
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert not missing, f"flags without help text: {missing}"


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_version_and_log_level(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        MAINS[prog](["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} 0.1.0"
    subcommands = next(a for a in PARSERS[prog]()._actions if isinstance(a, argparse._SubParsersAction))
    first = sorted(subcommands.choices)[0]
    args = PARSERS[prog]().parse_args(["--log-level", "DEBUG", first, *(["x"] if first == "tail" else [])])
    assert args.log_level == "DEBUG" and callable(args.func)
    with pytest.raises(SystemExit):
        PARSERS[prog]().parse_args(["--log-level", "LOUD", first])


def test_querylife_subcommands() -> None:
    parser = querylife.cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subcommands.choices) == {
        "features",
        "train",
        "evaluate",
        "reproduce",
        "handqueries",
        "evaluate-v2",
        "genfilt-cache",
        "export",
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--variant", "no_such_variant"])
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--no-such-flag"])


def test_delegated_subcommand_gets_the_arguments_after_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(export, "export_cli", lambda argv: seen.append(list(argv)) or 0)
    argv = ["--log-level", "WARNING", "export", "--triton-version", "3", "--out", "r"]
    assert querylife.cli.main(argv) == 0
    assert seen == [["--triton-version", "3", "--out", "r"]]
