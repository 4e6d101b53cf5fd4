"""Checkpoints that lose nothing: written atomically, the last K kept, refused when the spec no longer matches.

Layout under `<output_dir>/checkpoints/`:
    step_000010/            one complete checkpoint (written as .tmp-step_000010, then renamed)
        learner/            model (or LoRA adapter), optimizer, scheduler, learner RNG states
        driver.pkl          DriverState: step, policy version, MLflow run id, prompt cursor, APRIL buffer,
                            unconsumed store groups, driver RNG states
        spec.yaml           the resolved spec the run was started with
    latest                  text file naming the newest complete checkpoint; written last
A crash mid-write leaves only a `.tmp-*` directory, which is ignored and cleaned up by the next save.
"""

from __future__ import annotations

import pickle
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rlplat.types import Group

LATEST = "latest"
# Spec keys that may differ between the run that wrote a checkpoint and the run that resumes from it.
RESUMABLE_KEYS = ("experiment.num_steps", "checkpoint.", "tracking.log_samples_every_steps", "cluster.")


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


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


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
    """Finish a checkpoint: write the driver state and spec, rename into place, then point `latest` at it."""
    with open(tmp / "driver.pkl", "wb") as f:
        pickle.dump(state, f)
    (tmp / "spec.yaml").write_text(spec_yaml)
    final = root / f"step_{state.step:06d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    marker = root / f".{LATEST}.tmp"
    marker.write_text(final.name)
    marker.replace(root / LATEST)  # atomic on POSIX
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    marker = root / LATEST
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    return path if (path / "driver.pkl").is_file() else None


def load_driver_state(path: Path) -> DriverState:
    with open(path / "driver.pkl", "rb") as f:
        return pickle.load(f)  # our own file, written by `commit`


def spec_differences(saved_yaml: str, current: dict[str, Any]) -> list[str]:
    """Flattened keys whose values differ between the saved spec and the current one, except resumable keys.

    Keys present on one side only (a newer rlplat added a setting, with its default) are not differences.
    """
    from rlplat.config import flatten

    saved = flatten(yaml.safe_load(saved_yaml))
    now = flatten(current)
    diffs = [k for k in sorted(set(saved) & set(now)) if saved[k] != now[k]]
    return [k for k in diffs if not k.startswith(RESUMABLE_KEYS)]
