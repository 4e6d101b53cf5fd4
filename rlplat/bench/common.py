"""Shared helpers for `rlplat bench NAME` commands."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DEMO_MODEL = Path("models/tiny")  # what `make demo` and `python -m rlplat model tiny models/tiny` write
# Put before the user's overrides: a bench measures a Ray of its own, never one someone else runs on this machine.
LOCAL_RAY = "cluster.address=local"
OVERRIDES_HELP = "spec overrides a.b=value (a bench starts its own local Ray; cluster.address=auto attaches to a " \
                 "running cluster instead)"

# While a list, emit_headline keeps its line here instead of printing it: `headline_last` prints it at the very end.
_held_headlines: list[str] | None = None


def machine_description() -> str:
    """A short human-readable name for the machine a benchmark ran on, e.g. 'cpu: 2 cores x86_64'."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"gpu: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return f"cpu: {os.cpu_count()} cores {platform.machine()}"


def ensure_model(path: str | Path, *, write_if_missing: bool = False) -> Path:
    """The model directory a bench runs on. When missing, the demo's tiny model (models/tiny, or any path with
    `write_if_missing`: a bench flag documented so) is written as `make demo` writes it; any other missing model
    is bad input: ConfigError, one line naming the command that writes a tiny one. Never a hub request."""
    from rlplat.config import ConfigError

    p = Path(path)
    if (p / "config.json").is_file():
        return p
    if write_if_missing or p.resolve() == DEMO_MODEL.resolve():
        from rlplat.models import write_tiny_model

        print(f"writing the tiny model to {p} (as `python -m rlplat model tiny {p}`)", file=sys.stderr)
        return write_tiny_model(p)
    raise ConfigError(f"model.path: model directory {str(p)!r} does not exist (create one with "
                      f"`python -m rlplat model tiny {p}`)")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def emit_headline(
    bench: str, *, metric: str, value: float, unit: str, goal: float | None, higher_is_better: bool
) -> None:
    """The closing JSON line every benchmark ends with, so runs can be compared over time. Printed at once, or,
    under `headline_last` (as `rlplat bench` runs a bench), held until everything else has printed."""
    line = {
        "bench": bench,
        "metric": metric,
        "value": value,
        "unit": unit,
        "goal": goal,
        "higher_is_better": higher_is_better,
        "machine": machine_description(),
    }
    if _held_headlines is not None:
        _held_headlines.append(json.dumps(line))
    else:
        print(json.dumps(line), flush=True)


def headline_last(main: Callable[[], int], quiet: Callable[[], None]) -> int:
    """Run a bench's `main` holding back its JSON line; then `quiet()`, flush, and print the line, so it is the last
    line of stdout. `quiet` stops whatever still prints (the CLI shuts Ray down, which stops the forwarding of actor
    logs: they arrive late, after `main` returned). It runs also when `main` fails; then no line is printed."""
    global _held_headlines
    held: list[str] = []
    _held_headlines = held
    try:
        status = main()
    finally:
        _held_headlines = None
        quiet()
        sys.stderr.flush()
        sys.stdout.flush()
    for text in held:
        print(text, flush=True)
    return status


def _fmt(cell: object) -> str:
    if isinstance(cell, float):
        return f"{cell:.4g}"
    return str(cell)
