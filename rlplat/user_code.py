"""Loading a user's function named in a spec as `path/to/file.py:function` (rewards, tools). Standard library only.

The file runs as code with the user's rights (README "What rlplat trusts")."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_function(path: str, name: str, *, what: str) -> Callable[..., Any]:
    """The function `name` of the Python file `path`; ValueError starting with `what` (e.g. "reward 'f.py:g'")
    when the file is missing, fails to import, or has no such function."""
    if not Path(path).is_file():
        raise ValueError(f"{what}: file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"rlplat_user_{Path(path).stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a user's file: report any import failure by name
        raise ValueError(f"{what}: importing {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{what}: {path} has no function {name!r}")
    return fn
