"""Shared helpers for `rlplat bench NAME` commands."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence


def machine_description() -> str:
    """A short human-readable name for the machine a benchmark ran on, e.g. 'cpu: 2 cores x86_64'."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"gpu: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return f"cpu: {os.cpu_count()} cores {platform.machine()}"


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
    """Print the closing JSON line every benchmark ends with, so runs can be compared over time."""
    line = {
        "bench": bench,
        "metric": metric,
        "value": value,
        "unit": unit,
        "goal": goal,
        "higher_is_better": higher_is_better,
        "machine": machine_description(),
    }
    print(json.dumps(line), flush=True)


def _fmt(cell: object) -> str:
    if isinstance(cell, float):
        return f"{cell:.4g}"
    return str(cell)
