"""The strict loader: YAML -> `RunConfig`, and plain-data views of a config.

An unknown key, a wrong type, a missing required value or a bad value raises `ConfigError` naming the file and
the key path (`rollout.num_samples_per_prompt`). One `base: other.yaml` include is allowed per file; command-line
overrides are `a.b=value` (the value is parsed as YAML). Types come from each section's annotations: a nested
dataclass is a mapping, a Literal lists its values, `X | None` accepts null, `tuple[T, ...]` a list.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from rlplat.config.errors import ConfigError
from rlplat.config.run import RunConfig


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML spec (with at most one `base:` include) and `a.b=value` overrides into a `RunConfig`."""
    raw = _read_yaml_with_base(Path(path))
    for item in overrides:
        _apply_override(raw, item, path)
    try:
        return build(RunConfig, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def build(cls: type, raw: Any, where: str) -> Any:
    """Construct dataclass `cls` from a mapping, checking keys and types; `where` is the key path so far."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'spec'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key (valid keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: required key is missing")
    try:
        return cls(**kwargs)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where or 'spec'}: {e}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(nested) == 1:  # an optional section: report its own bad key
            return build(nested[0], value, where)
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    return _coerce_scalar(tp, value, where)


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    number = tp is float and isinstance(value, int | float) and not isinstance(value, bool)
    if number or (tp is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip())):
        x = float(value)  # PyYAML reads `3e-4` (no dot) as a string
        if not math.isfinite(x):  # .inf, .nan, 1e400: an infinite lr, temperature or timeout is never meant
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return x
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}")


def _read_yaml_with_base(path: Path) -> dict:
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_raw = _read_yaml(path.parent / base)
    if "base" in base_raw:
        raise ConfigError(f"{path.parent / base}: at most one level of `base:` is allowed")
    return _merge(base_raw, raw)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"spec file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the spec must be a mapping at the top level")
    return raw


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(raw: dict, item: str, path: str | Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a mapping in {path}")
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: value is not valid YAML") from None


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def to_dict(cfg: Any) -> Any:
    """A plain-data view of a config (for YAML dumps and MLflow params)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become their repr."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
