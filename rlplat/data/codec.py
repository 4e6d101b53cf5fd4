"""The ExperienceStore's row codec: `Sample` <-> one TransferQueue row, with columns derived from Sample's fields.

Every dataclass field of `rlplat.types.Sample` is one column (plus `<name>_is_set` for an optional one), chosen by
its annotation, so a new Sample field of one of these types is stored with no edit here:

    list[int] / list[float]   a jagged nested tensor [rows, j] (int64 / float64; loss_mask int8, it holds 0/1)
    int / float / bool        a tensor [rows] (int64 / float64 / bool)
    int | None, float | ...   the same, None stored as 0 / NaN / False, and a bool column `<name>_is_set`
    str                       a NonTensorStack of the strings
    an Enum                   a NonTensorStack of its values

Floats are float64 so that what is put is exactly what is read back. Any other annotation raises TypeError when
this module is imported, naming the field. Rows of one group are consecutive; grouping is the store's business.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import torch
from tensordict import TensorDict
from tensordict.tensorclass import NonTensorStack

from rlplat.types import Sample

ColumnKind = Literal["jagged", "scalar", "optional", "text", "enum"]

_DTYPES: dict[Any, torch.dtype] = {int: torch.int64, float: torch.float64, bool: torch.bool}
_NARROW: dict[str, torch.dtype] = {"loss_mask": torch.int8}  # 0/1 per token: an eighth of int64's memory
_MISSING: dict[torch.dtype, Any] = {torch.int64: 0, torch.float64: math.nan, torch.bool: False}


@dataclass(frozen=True, slots=True)
class Column:
    """How one field of a record is stored: `name` is both the field and the TransferQueue column."""

    name: str
    kind: ColumnKind
    dtype: torch.dtype | None = None  # jagged, scalar, optional
    enum: type[Enum] | None = None  # enum

    @property
    def is_set_name(self) -> str:
        return f"{self.name}_is_set"


def columns_for(record: type) -> tuple[Column, ...]:
    """One `Column` per dataclass field of `record`, in field order (see the module docstring for the mapping).

    Raises TypeError for a field whose annotation has no column kind.
    """
    hints = typing.get_type_hints(record)
    return tuple(_column(f.name, hints[f.name]) for f in dataclasses.fields(record))


def _column(name: str, hint: Any) -> Column:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and len(args) == 1 and args[0] in (int, float):
        return Column(name, "jagged", _NARROW.get(name, _DTYPES[args[0]]))
    if hint in _DTYPES:
        return Column(name, "scalar", _DTYPES[hint])
    if isinstance(hint, type) and issubclass(hint, Enum):
        return Column(name, "enum", enum=hint)
    if hint is str:
        return Column(name, "text")
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        if inner in _DTYPES:
            return Column(name, "optional", _DTYPES[inner])
    raise TypeError(f"field {name!r}: the experience store cannot store a {hint!r}; give it one of the types in "
                    "rlplat/data/codec.py's docstring, or add a column kind there")


COLUMNS: tuple[Column, ...] = columns_for(Sample)


def column_names(columns: Sequence[Column] = COLUMNS) -> list[str]:
    """Every TransferQueue column the codec writes, `<name>_is_set` ones included."""
    return [n for c in columns for n in ((c.name, c.is_set_name) if c.kind == "optional" else (c.name,))]


def encode(samples: Sequence[Sample]) -> TensorDict:
    """Samples -> one TransferQueue row each, in order."""
    cols: dict[str, Any] = {}
    for c in COLUMNS:
        values = [getattr(s, c.name) for s in samples]
        if c.kind == "jagged":
            assert c.dtype is not None
            cols[c.name] = _jagged(values, c.dtype)
        elif c.kind == "scalar":
            cols[c.name] = torch.tensor(values, dtype=c.dtype)
        elif c.kind == "optional":
            assert c.dtype is not None
            cols[c.name] = torch.tensor([_MISSING[c.dtype] if v is None else v for v in values], dtype=c.dtype)
            cols[c.is_set_name] = torch.tensor([v is not None for v in values], dtype=torch.bool)
        elif c.kind == "text":
            cols[c.name] = NonTensorStack(*values)
        else:
            cols[c.name] = NonTensorStack(*[v.value for v in values])
    return TensorDict(cols, batch_size=len(samples))


def decode(data: TensorDict) -> list[Sample]:
    """TransferQueue rows -> Samples, in row order; the inverse of `encode`."""
    fields: dict[str, list[Any]] = {}
    for c in COLUMNS:
        values = _column_values(data, c.name)
        if c.kind == "optional":
            values = [v if is_set else None for v, is_set in zip(values, _column_values(data, c.is_set_name),
                                                                   strict=True)]
        elif c.kind == "enum":
            assert c.enum is not None
            values = [c.enum(v) for v in values]
        fields[c.name] = values
    num_rows = len(next(iter(fields.values()))) if fields else 0
    return [Sample(**{name: values[i] for name, values in fields.items()}) for i in range(num_rows)]


def _jagged(rows: list[list[Any]], dtype: torch.dtype) -> torch.Tensor:
    """Ragged rows -> a jagged nested tensor [rows, j], built from one flat tensor (much faster than per row)."""
    values = torch.tensor([x for row in rows for x in row], dtype=dtype)
    offsets = torch.tensor([0, *itertools.accumulate(len(row) for row in rows)], dtype=torch.int64)
    return torch.nested.nested_tensor_from_jagged(values, offsets)


def _column_values(data: TensorDict, name: str) -> list[Any]:
    """One column as a Python list: one list per row for ragged tensors, one value per row otherwise."""
    value = data.get(name)
    if not isinstance(value, torch.Tensor):  # NonTensorStack
        return list(value.tolist())
    if value.is_nested and value.layout == torch.jagged and value.is_contiguous():
        flat, offsets = value.values().tolist(), value.offsets().tolist()
        return [flat[a:b] for a, b in itertools.pairwise(offsets)]
    if value.is_nested or value.ndim > 1:
        return [row.tolist() for row in value.unbind()]
    return value.tolist()
