"""The config surface (every key of a spec, its type and default) is frozen by a snapshot: adding, renaming or
re-defaulting a key is a visible diff of `config_surface.txt` in review.

After an intended change: `.venv/bin/python tests/unit/config/test_surface.py` rewrites the snapshot.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from rlplat.config import RunConfig

SNAPSHOT = Path(__file__).with_name("config_surface.txt")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_type_name(args[0])}, ...]"
        return f"tuple[{', '.join(_type_name(a) for a in args)}]"
    return "None" if tp is type(None) else tp.__name__


def _nested(tp: Any) -> Any:
    """The dataclass a key holds (a section, an optional section, or the items of a tuple), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
    return found[0] if len(found) == 1 else None


def surface(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per key: `path: type = default` (`required` when it has none); sections are recursed into."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        path, tp = f"{prefix}{f.name}", hints[f.name]
        nested = _nested(tp)
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = "{...}" if dataclasses.is_dataclass(tp) else repr(f.default_factory())
        else:
            default = "required"
        lines.append(f"{path}: {_type_name(tp)} = {default}")
        if nested is not None:
            items = typing.get_origin(tp) is tuple
            lines += surface(nested, f"{path}[].") if items else surface(nested, f"{path}.")
    return lines


def test_config_surface_matches_snapshot() -> None:
    now = surface()
    frozen = SNAPSHOT.read_text().splitlines()
    diff = "\n".join(difflib.unified_diff(frozen, now, "config_surface.txt", "rlplat.config", lineterm=""))
    assert now == frozen, f"the config surface changed; if intended, run {__file__}:\n{diff}"


if __name__ == "__main__":
    SNAPSHOT.write_text("\n".join(surface()) + "\n")
    print(f"wrote {SNAPSHOT}")
