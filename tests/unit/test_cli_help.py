"""`rlplat --help` and every subcommand's help list the real options; `rlplat bench` lists the real benchmarks."""

from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import rlplat.bench
from rlplat.cli import _parser, main

ROOT = Path(__file__).resolve().parents[2]


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix, parser) for the parser and every nested subcommand, except `bench` (its own parsers)."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if prefix + (name,) != ("bench",):
                    yield from _subcommands(sub, prefix + (name,))


def _shown_names(action: argparse.Action) -> list[str]:
    if action.option_strings:
        return [max(action.option_strings, key=len)]
    if isinstance(action, argparse._SubParsersAction):
        return list(action.choices)
    return [action.metavar if isinstance(action.metavar, str) else action.dest]


def test_top_level_help(capsys) -> None:
    out = _help([], capsys)
    for word in ("train", "model", "bench", "--help", "ray job submit", "docs/deploy.md"):
        assert word in out


def test_train_help(capsys) -> None:
    out = _help(["train"], capsys)
    for word in ("spec", "overrides", "key.path=value", "--dry-run", "--no-progress"):
        assert word in out


def test_model_tiny_help(capsys) -> None:
    out = _help(["model", "tiny"], capsys)
    for word in ("OUT_DIR", "--hidden-size", "--num-layers", "--num-heads", "--seed", "(default: 128)"):
        assert word in out


@pytest.mark.parametrize("argv", [list(p) for p, _ in _subcommands(_parser())], ids=lambda a: " ".join(a) or "rlplat")
def test_every_option_is_listed_with_help(argv: list[str], capsys) -> None:
    """Whatever options the parser has (including ones added later), its --help shows each with a help text."""
    parser = dict(_subcommands(_parser()))[tuple(argv)]
    out = _help(argv, capsys)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for name in _shown_names(action):
            assert name in out, f"`rlplat {' '.join(argv)} --help` does not show {name}"
        if action.option_strings or not isinstance(action, argparse._SubParsersAction):
            assert action.help, f"{_shown_names(action)} in `rlplat {' '.join(argv)}` has no help text"


def test_bench_lists_every_benchmark(capsys) -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(rlplat.bench.__path__) if m.name != "common")
    assert names, "no benchmarks found"
    assert main(["bench"]) == 2  # no NAME: usage, bad input
    out = capsys.readouterr().out
    assert main(["bench", "--help"]) == 0
    assert capsys.readouterr().out == out
    for name in names:
        assert name in out


def test_module_entry_point_help() -> None:
    done = subprocess.run([sys.executable, "-m", "rlplat", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage: rlplat" in done.stdout
