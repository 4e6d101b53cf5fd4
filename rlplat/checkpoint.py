"""Checkpoints that lose nothing, say when they are damaged, and never run code when loaded.

Layout under `<output_dir>/checkpoints/` (docs/checkpoints.md has the whole story):
    step_000010/                 one complete checkpoint (written as .tmp-step_000010, then renamed)
        learner/learner_state.pt model (or LoRA adapter), optimizer, scheduler, learner RNG: tensors and plain data,
                                 read back with torch.load(weights_only=True) (`rlplat.learners.state`)
        driver.json              DriverState as JSON: step, policy version, MLflow run id, prompt cursor, APRIL
                                 buffer, unconsumed store groups, ReMix replay, driver RNG states
        spec.yaml                the resolved spec the run was started with
        manifest.json            written last: format, step, run id, and every other file's size and sha256
    latest                       text file naming the newest checkpoint, for people; the code scans step_* itself

Writing: `begin` gives a temporary folder, the learner writes into it, `commit` adds the driver state, the spec and
the manifest, fsyncs them, renames the folder into place, then prunes. A crash mid-write leaves only a `.tmp-*`
folder, ignored and removed by the next `begin`. Pruning counts only this run's checkpoints (the manifest's run
id), orders them by step number and never deletes the one just written.

Reading: `find_resumable` takes the newest checkpoint whose files all match its manifest and warns about each newer
one it skipped; a checkpoint without manifest or driver state is damaged, never "no checkpoint". Records
(`Group`, `Sample`, `EpisodeGroup`, ...) are written from their dataclass fields and rebuilt only as record types
of `RECORD_MODULES`; nothing is unpickled. Checkpoints with a `driver.pkl` predate this format and are refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import random
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rlplat.types import Group

log = logging.getLogger("rlplat")

LATEST = "latest"
MANIFEST = "manifest.json"
DRIVER_STATE = "driver.json"
SPEC = "spec.yaml"
LEARNER_STATE = "learner/learner_state.pt"  # written by rlplat.learners.state.save_learner_state
REQUIRED_FILES = (DRIVER_STATE, SPEC)  # the learner's files are listed as it wrote them
LEGACY_STATE = "driver.pkl"  # the pickle format before manifests; refused
FORMAT = 1
STEP_DIR = re.compile(r"step_(\d+)")
# Spec keys that may differ between the run that wrote a checkpoint and the run that resumes from it. The output
# dir may move: nothing inside a checkpoint names it (the manifest's paths are relative to the checkpoint folder).
RESUMABLE_KEYS = ("experiment.num_steps", "experiment.output_dir", "checkpoint.", "tracking.log_samples_every_steps",
                  "cluster.")
# Modules whose dataclasses and enums a driver state may contain; nothing else is ever constructed when loading.
RECORD_MODULES = ("rlplat.types", "rlplat.envs.agent_loop", "rlplat.envs.episode_april", "rlplat.agents.loop")
_SCALARS = frozenset({int, float, str, bool, type(None)})


@dataclass
class DriverState:
    step: int
    policy_version: int
    run_id: str
    cursor: dict[str, int]
    partial_buffer: list[Any] = field(default_factory=list)  # APRIL: Groups, or EpisodeGroups with env episodes
    store_groups: list[Group] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    replay: dict[str, Any] = field(default_factory=dict)  # ReMix replay buffer (groups of past versions, RNGs)
    rng: dict[str, Any] = field(default_factory=dict)
    probe_token_ids: list[int] = field(default_factory=list)  # the final weight check's tokens (driver.loop)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch CPU generator states as plain data and one tensor (JSON- and weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])


# ------------------------------------------------------------------------------------------------ JSON codec
def to_json(obj: Any, where: str = "state") -> Any:
    """`obj` as JSON data. Dataclasses of RECORD_MODULES (and DriverState) by their fields, enums by value, tuples,
    dicts with non-string keys, tensors and arrays tagged so that `from_json` rebuilds them exactly.

    A new field of a record needs no change here; a value of another type is a TypeError naming where it is.
    """
    if isinstance(obj, Enum):  # first: FinishReason is also a str
        _check_record_type(type(obj), where)
        return {"__enum__": type(obj).__name__, "value": obj.value}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _check_record_type(type(obj), where)
        return {"__record__": type(obj).__name__,
                "fields": {f.name: to_json(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}}
    if isinstance(obj, list):
        if all(type(v) in _SCALARS for v in obj):  # token ids, log-probs: no per-item call (exact types: no enums)
            return obj
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [to_json(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: to_json(v, f"{where}.{k}") for k, v in obj.items()}
        return {"__dict__": [[to_json(k, where), to_json(v, f"{where}[{k!r}]")] for k, v in obj.items()]}
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return {"__tensor__": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": t.flatten().tolist()}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.dtype.str, "shape": list(obj.shape), "data": obj.ravel().tolist()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{where}: a {type(obj).__name__} cannot go into a checkpoint (plain data, records, tensors only)")


def from_json(data: Any, where: str = "state") -> Any:
    """The inverse of `to_json`. Builds only record types and enums of RECORD_MODULES; ValueError naming `where`."""
    if isinstance(data, list):
        if all(type(v) in _SCALARS for v in data):
            return data
        return [from_json(v, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, dict):
        return data
    if "__record__" in data:
        return _build_record(_record_type(data["__record__"], where), data.get("fields"), where)
    if "__enum__" in data:
        cls = _record_type(data["__enum__"], where)
        try:
            return cls(data["value"])
        except (KeyError, ValueError):
            raise ValueError(f"{where}: {data.get('value')!r} is no {cls.__name__}") from None
    if "__tuple__" in data:
        return tuple(from_json(data["__tuple__"], where))
    if "__dict__" in data:
        return {from_json(k, where): from_json(v, f"{where}[{k!r}]") for k, v in data["__dict__"]}
    if "__tensor__" in data:
        dtype = getattr(torch, str(data["__tensor__"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{where}: unknown tensor dtype {data['__tensor__']!r}")
        return torch.tensor(data["data"], dtype=dtype).reshape(data["shape"])
    if "__ndarray__" in data:
        return np.asarray(data["data"], dtype=np.dtype(str(data["__ndarray__"]))).reshape(data["shape"])
    return {k: from_json(v, f"{where}.{k}") for k, v in data.items()}


def _check_record_type(cls: type, where: str) -> None:
    if cls is not DriverState and cls.__module__ not in RECORD_MODULES:
        raise TypeError(f"{where}: {cls.__module__}.{cls.__name__} is not a record type of {RECORD_MODULES}; "
                        f"add its module to rlplat.checkpoint.RECORD_MODULES")


def _record_type(name: Any, where: str) -> type:
    types = _record_types(envs=False)
    if name not in types:
        types = _record_types(envs=True)  # env records import EnvPool: only when a checkpoint holds them
    if name not in types:
        raise ValueError(f"{where}: {name!r} is not a record type this rlplat knows")
    return types[name]


@functools.cache
def _record_types(*, envs: bool) -> dict[str, type]:
    """Dataclasses and enums defined in RECORD_MODULES (the env modules only if `envs`), by class name."""
    out: dict[str, type] = {"DriverState": DriverState}
    for name in RECORD_MODULES if envs else RECORD_MODULES[:1]:
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if isinstance(cls, type) and cls.__module__ == name and (
                    dataclasses.is_dataclass(cls) or issubclass(cls, Enum)):
                assert out.get(cls.__name__, cls) is cls, f"two record types named {cls.__name__}"
                out[cls.__name__] = cls
    return out


def _build_record(cls: type, fields: Any, where: str) -> Any:
    if not dataclasses.is_dataclass(cls) or not isinstance(fields, dict):
        raise ValueError(f"{where}: malformed {cls.__name__} record")
    known = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := sorted(set(fields) - set(known)):
        raise ValueError(f"{where}: {cls.__name__} has no field {', '.join(unknown)} (written by a newer rlplat?)")
    values = {k: from_json(v, f"{where}.{k}") for k, v in fields.items()}
    try:
        obj = cls(**{k: v for k, v in values.items() if known[k].init})
    except TypeError as e:
        raise ValueError(f"{where}: cannot rebuild {cls.__name__}: {e}") from None
    for k, v in values.items():
        if not known[k].init:
            object.__setattr__(obj, k, v)
    return obj


# ----------------------------------------------------------------------------------------------------- writing
def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def begin(root: Path, step: int) -> Path:
    """A fresh temporary directory for the checkpoint of `step` (stale temporaries are removed)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step_{step:06d}"
    tmp.mkdir()
    return tmp


def commit(root: Path, tmp: Path, state: DriverState, spec_yaml: str, *, keep_last: int) -> Path:
    """Finish a checkpoint: write the driver state, spec and manifest (last), rename into place, point `latest` at
    it, then prune this run's older checkpoints down to `keep_last` (never the new one)."""
    (tmp / DRIVER_STATE).write_text(json.dumps(to_json(state)))
    (tmp / SPEC).write_text(spec_yaml)
    files = _digests(tmp, sorted(p for p in tmp.rglob("*") if p.is_file()), sync=True)
    manifest = {"format": FORMAT, "step": state.step, "run_id": state.run_id, "files": files}
    _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1))
    _fsync_dir(tmp)
    final = root / f"step_{state.step:06d}"
    replaced = root / f".tmp-replaced-{final.name}"  # a crash before the rmtree leaves it to `begin`'s cleanup
    if final.exists():  # this run, resumed from an earlier checkpoint, writes the same step again
        final.rename(replaced)
    tmp.rename(final)
    _fsync_dir(root)
    shutil.rmtree(replaced, ignore_errors=True)
    marker = root / f".{LATEST}.tmp"
    marker.write_text(final.name)
    marker.replace(root / LATEST)  # atomic on POSIX
    prune(root, final, run_id=state.run_id, keep_last=keep_last)
    return final


def prune(root: Path, newest: Path, *, run_id: str, keep_last: int) -> list[Path]:
    """Delete checkpoints of run `run_id` beyond the `keep_last` newest by step up to `newest` (which stays), and
    those of a later step than `newest` (a resumed run wrote over that stretch again). Other runs' checkpoints and
    ones whose manifest cannot be read are left alone. Returns what was deleted."""
    step = _step_of(newest)
    assert step is not None and keep_last >= 1, (newest, keep_last)
    ours = [(s, p) for s, p in checkpoints(root) if p != newest and _manifest_run_id(p) == run_id]
    older = [p for s, p in ours if s < step]
    doomed = [p for s, p in ours if s > step] + older[: max(0, len(older) - (keep_last - 1))]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    if doomed:
        log.info("checkpoints: removed %s (keep_last %d)", ", ".join(p.name for p in doomed), keep_last)
    return doomed


def _digests(base: Path, paths: list[Path], *, sync: bool = False) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} for `paths` under `base`, hashed in parallel (hashlib frees the GIL)."""
    def one(path: Path) -> dict[str, Any]:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            if sync:
                os.fsync(f.fileno())  # data on disk before the rename publishes the checkpoint
            return {"bytes": os.fstat(f.fileno()).st_size, "sha256": digest}

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(paths)))) as pool:
        return dict(zip((p.relative_to(base).as_posix() for p in paths), pool.map(one, paths), strict=True))


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------- reading
def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `step_N` folder under `root`, complete or not, ordered by step number."""
    if not root.is_dir():
        return []
    found = [(_step_of(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None)


def written_at_ms(path: Path) -> int:
    """When checkpoint `path` was committed (its manifest is written last), in ms since the epoch."""
    return int((path / MANIFEST).stat().st_mtime * 1000)


def latest(root: Path) -> Path | None:
    """The newest checkpoint by step that has a manifest (not verified: `find_resumable` checks its files)."""
    for _, path in reversed(checkpoints(root)):
        if (path / MANIFEST).is_file():
            return path
    return None


def verify(path: Path) -> dict[str, Any]:
    """Check every file of checkpoint `path` against its manifest; returns the manifest.

    Raises ValueError, one line naming the checkpoint and the file, when it predates the safe format, has no
    manifest, lacks its driver state, or a file is missing, truncated or changed.
    """
    manifest = _read_manifest(path)
    files: dict[str, Any] = manifest["files"]
    if missing := [f for f in REQUIRED_FILES if f not in files]:
        raise ValueError(f"checkpoint {path}: its manifest lists no {', '.join(missing)} (incomplete checkpoint)")
    if absent := [f for f in files if not (path / f).is_file()]:
        raise ValueError(f"checkpoint {path}: {absent[0]} is missing")
    actual = _digests(path, [path / f for f in files])
    for name, want in files.items():
        _compare(path, name, want, actual[name])
    return manifest


def load_driver_state(path: Path) -> DriverState:
    """The driver state of checkpoint `path` from its JSON (checked against the manifest); no code runs.

    ValueError (one line naming the file) for an old pickle checkpoint, a missing, truncated or changed file.
    """
    manifest = _read_manifest(path)
    file = path / DRIVER_STATE
    if DRIVER_STATE not in manifest["files"] or not file.is_file():
        raise ValueError(f"checkpoint {path}: {DRIVER_STATE} is missing (incomplete checkpoint, no driver state)")
    _compare(path, DRIVER_STATE, manifest["files"][DRIVER_STATE], _digests(path, [file])[DRIVER_STATE])
    try:
        state = from_json(json.loads(file.read_text()), DRIVER_STATE)
    except (ValueError, TypeError, KeyError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"checkpoint {path}: {DRIVER_STATE} cannot be read: {str(e).splitlines()[0]}") from None
    if not isinstance(state, DriverState):
        raise ValueError(f"checkpoint {path}: {DRIVER_STATE} holds a {type(state).__name__}, not a DriverState")
    return state


def find_resumable(root: Path) -> tuple[Path, DriverState, list[tuple[Path, str]]] | None:
    """The newest checkpoint under `root` whose files all match its manifest, its driver state, and the newer
    checkpoints skipped with why (each also logged as a one-line warning).

    None only when `root` holds no checkpoint folder at all. When checkpoints exist but none is intact, ValueError
    naming each one's fault: a damaged checkpoint is never read as "no checkpoint".
    """
    skipped: list[tuple[Path, str]] = []
    found = list(reversed(checkpoints(root)))
    for _, path in found:
        try:
            verify(path)
            state = load_driver_state(path)
        except ValueError as e:
            skipped.append((path, str(e)))
            continue
        for bad, why in skipped:
            log.warning("skipping damaged checkpoint %s, resuming from %s instead: %s", bad.name, path.name, why)
        return path, state, skipped
    if not found:
        return None
    raise ValueError(f"no intact checkpoint in {root}: " + "; ".join(why for _, why in skipped))


def check_fresh_start(root: Path) -> None:
    """For a run that does not resume: ValueError when `root` already holds checkpoints (of an earlier run), whose
    steps this run would write over and whose pruning would mix with its own. Call before any actor starts."""
    found = checkpoints(root)
    if found:
        raise ValueError(f"output dir {root.parent} holds checkpoints up to step {found[-1][0]} of an earlier run; "
                         "pass --resume to continue it, --start-over to move them aside, or choose another "
                         "experiment.name / output dir")


def move_aside(root: Path) -> Path | None:
    """Rename `root` (an earlier run's checkpoints) to `<root>.earlier-<UTC time>` so a fresh run can start there;
    returns the new name, or None when there was nothing to move."""
    if not root.exists():
        return None
    target = root.with_name(f"{root.name}.earlier-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    root.rename(target)
    return target


def spec_differences(saved_yaml: str, current: dict[str, Any]) -> list[str]:
    """Flattened keys whose values differ between the saved spec and the current one, except resumable keys.

    Keys present on one side only (a newer rlplat added a setting, with its default) are not differences.
    """
    from rlplat.config import flatten

    saved = flatten(yaml.safe_load(saved_yaml))
    now = flatten(current)
    diffs = [k for k in sorted(set(saved) & set(now)) if saved[k] != now[k]]
    return [k for k in diffs if not k.startswith(RESUMABLE_KEYS)]


def _step_of(path: Path) -> int | None:
    match = STEP_DIR.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _manifest_run_id(path: Path) -> str | None:
    try:
        return str(json.loads((path / MANIFEST).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_manifest(path: Path) -> dict[str, Any]:
    if (path / LEGACY_STATE).exists():
        raise ValueError(f"checkpoint {path} predates the safe checkpoint format ({LEGACY_STATE} is a pickle, which "
                         f"can run code when loaded); it is not loaded: start a fresh run, or resume it with the "
                         f"rlplat version that wrote it")
    file = path / MANIFEST
    if not file.is_file():
        raise ValueError(f"checkpoint {path}: {MANIFEST} is missing (incomplete checkpoint)")
    try:
        manifest = json.loads(file.read_text())
        ok = manifest["format"] == FORMAT and isinstance(manifest["files"], dict) and all(
            isinstance(v, dict) and {"bytes", "sha256"} <= v.keys() and not Path(k).is_absolute()
            and ".." not in Path(k).parts for k, v in manifest["files"].items())
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {path}: {MANIFEST} cannot be read ({type(e).__name__}; truncated?)") from None
    if not ok:
        raise ValueError(f"checkpoint {path}: {MANIFEST} is not a format-{FORMAT} manifest")
    return manifest


def _compare(path: Path, name: str, want: dict[str, Any], got: dict[str, Any]) -> None:
    if got["bytes"] != want["bytes"]:
        raise ValueError(f"checkpoint {path}: {name} has {got['bytes']} bytes, its manifest says {want['bytes']} "
                         f"(truncated or replaced)")
    if got["sha256"] != want["sha256"]:
        raise ValueError(f"checkpoint {path}: {name} differs from its manifest (sha256); the file was changed")
