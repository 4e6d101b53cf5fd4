"""Sharded learner checkpoints through `torch.distributed.checkpoint` (DCP): each rank writes its own shards of the
model and the optimizer; a checkpoint loads on the same number of ranks or another (DCP reshards on load: 2 -> 1
is tested), into an FSDP2 model or a plain one.

State dicts come from `torch.distributed.checkpoint.state_dict.get_state_dict`, which names every tensor by its
parameter's fully qualified name (optimizer state included), so nothing depends on the rank count or on how the
parameters were flattened. Plain data (policy version, scheduler state, step) travels in `extra`, written as JSON
by rank 0 (`extra.json`), so loading unpickles nothing of ours.

Atomic like `rlplat.checkpoint`: the ranks write into `.tmp-<name>` beside the target, then, after a barrier, rank 0
renames it into place (a crash leaves only the temporary folder, removed by the next save). The folder must be on
a file system every rank sees. Keep-last pruning stays with `rlplat.checkpoint`, which owns the step folders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim import Optimizer

METADATA = ".metadata"  # DCP's index file, written last by the coordinator rank
EXTRA = "extra.json"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(model: nn.Module, optimizer: Optimizer, path: str | Path, *,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write the model and optimizer state of every rank to the folder `path` (replaced if it exists) and return
    it. A collective: every rank calls it with the same path. `extra`: JSON-able plain data (same on every rank)."""
    final = Path(path)
    tmp = final.parent / f".tmp-{final.name}"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()  # the folder exists before anyone writes
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    _barrier()  # every rank's shards are on disk
    if _rank() == 0:
        (tmp / EXTRA).write_text(json.dumps(extra or {}))
        replaced = final.parent / f".tmp-replaced-{final.name}"
        if final.exists():
            final.rename(replaced)
        tmp.rename(final)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        shutil.rmtree(replaced, ignore_errors=True)
    _barrier()  # nobody reads the folder before it is in place
    return final


def load_sharded(model: nn.Module, optimizer: Optimizer, path: str | Path) -> dict[str, Any]:
    """Load a `save_sharded` folder into `model` and `optimizer` (sharded over any number of ranks, or plain) and
    return its `extra`. A collective when a process group is up. Raises ValueError when `path` holds no complete
    DCP checkpoint (no metadata: a crashed save leaves only a `.tmp-*` folder)."""
    src = Path(path)
    if not (src / METADATA).is_file() or not (src / EXTRA).is_file():
        raise ValueError(f"{src} is no sharded checkpoint (no {METADATA}: missing, or a save that did not finish)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=src)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((src / EXTRA).read_text())


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Only the model's weights of a `save_sharded` folder, into a plain model in this one process (no process group:
    DCP gathers every rank's shards; the optimizer state is not read). What `rlplat eval --checkpoint` serves.
    ValueError (one line) for a folder that is no complete checkpoint or does not fit `model`."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    src = Path(path)
    if not (src / METADATA).is_file():
        raise ValueError(f"{src} is no sharded checkpoint (no {METADATA}: missing, or a save that did not finish)")
    state = {"model": get_model_state_dict(model)}
    try:
        dcp.load(state, checkpoint_id=src)
    except Exception as e:  # DCP wraps every rank's failure (missing key, wrong shape) in a CheckpointException
        first = next((line for line in str(e).splitlines() if "Error" in line), str(e).splitlines()[0])
        raise ValueError(f"{src} does not fit the model: {first.strip()}") from None
    set_model_state_dict(model, state["model"])
