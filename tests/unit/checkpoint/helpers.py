"""Hand-made checkpoints for the checkpoint tests: a tiny learner file, a driver state, a commit."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from rlplat import checkpoint as ck
from rlplat.types import FinishReason, Group, Sample


def sample(step: int) -> Sample:
    s = Sample(group_id=7, sample_index=0, prompt_id=3, prompt_token_ids=[1, 2])
    s.extend([5, 6], [-0.5, -0.25], [step, step + 1], FinishReason.PENDING)
    return s


def state(step: int, run_id: str = "abc") -> ck.DriverState:
    return ck.DriverState(step=step, policy_version=step, run_id=run_id, cursor={"epoch": 0, "position": step},
                          partial_buffer=[Group(group_id=7, prompt_id=3, samples=[sample(step)])], rng=ck.rng_state())


def save(root: Path, step: int, *, run_id: str = "abc", keep_last: int = 3, spec: str = "a: 1\n") -> Path:
    """A checkpoint as the driver writes one: the learner's file into `begin`'s folder, then `commit`."""
    tmp = ck.begin(root, step)
    (tmp / "learner").mkdir()
    torch.save({"model": {"w": torch.full((3,), float(step))}, "policy_version": step}, tmp / ck.LEARNER_STATE)
    return ck.commit(root, tmp, state(step, run_id), spec, keep_last=keep_last)


def steps(root: Path) -> list[int]:
    return [s for s, _ in ck.checkpoints(root)]


class Planted:
    """Unpickling this creates `marker` (what a hostile checkpoint would do with a shell command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def legacy_checkpoint(root: Path, marker: Path) -> Path:
    """A checkpoint in the old layout: driver.pkl (a planted pickle) next to the learner's file, no manifest."""
    path = root / "step_000004"
    (path / "learner").mkdir(parents=True)
    torch.save({"model": {}}, path / ck.LEARNER_STATE)
    (path / "driver.pkl").write_bytes(pickle.dumps(Planted(marker)))
    return path


def plant_learner_state(path: Path, marker: Path) -> None:
    """Replace checkpoint `path`'s learner state by a planted pickle and rewrite the manifest to fit (the checksums
    pass: only the loader stands in the way)."""
    torch.save({"model": {"w": Planted(marker)}}, path / ck.LEARNER_STATE)
    manifest = json.loads((path / ck.MANIFEST).read_text())
    manifest["files"] = ck._digests(path, [path / f for f in manifest["files"]])
    (path / ck.MANIFEST).write_text(json.dumps(manifest))
