"""Save and restore everything a PolicyLearner needs to continue bit-for-bit: weights (LoRA adapters included),
optimizer and scheduler state, the policy version, frozen reference snapshots, the critic, and RNG states.

The file holds tensors and plain data only (the NumPy RNG key as a list), so it loads with
`torch.load(weights_only=True)`: a planted file cannot run code. Damaged files give a one-line ValueError.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from rlplat import checkpoint as ck

STATE_FILE = "learner_state.pt"


def save_learner_state(learner: Any, out_dir: str | Path) -> None:
    """The one-process learner: one `learner_state.pt`. An FSDP learner: DCP shards (`rlplat.learners.sharded`)."""
    if getattr(getattr(learner, "ranks", None), "sharded", False):
        from rlplat.learners import sharded

        sharded.save_state(learner, out_dir)
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "model": learner.model.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "policy_version": learner.policy_version,
        "rng": ck.rng_state(),
    }
    for name in ("ref", "prev"):  # frozen snapshots (ReMix reference / previous policy), not the LoRA base
        frozen = getattr(learner, name, None)
        if isinstance(frozen, dict):
            state[name] = frozen
    critic = getattr(learner, "critic", None)
    if critic is not None:
        state["critic_model"] = critic.model.state_dict()
        state["critic_optimizer"] = critic.optimizer.state_dict()
    torch.save(state, out / STATE_FILE)


def read_learner_state(in_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The saved state dict, loaded with weights_only=True; ValueError (one line naming the file) otherwise."""
    path = Path(in_dir) / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # an object beyond tensors and plain data: an old or planted file
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise ValueError(f"{path} holds more than tensors and plain data ({found.group(1) if found else 'an object'}"
                         f"), so it is not loaded: a checkpoint from before the safe format, or not written by "
                         f"rlplat") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} cannot be read (truncated or damaged?): {first}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a learner state (no 'model' entry)")
    return state


def load_learner_state(learner: Any, in_dir: str | Path) -> None:
    """Either format into either learner, except a one-process `learner_state.pt` into an FSDP learner."""
    from rlplat.learners import sharded

    if sharded.is_sharded_state(in_dir):
        sharded.load_state(learner, in_dir)  # DCP reshards: N ranks -> M ranks, or -> the plain learner
        return
    if getattr(getattr(learner, "ranks", None), "sharded", False):
        raise ValueError(f"{in_dir} is a one-process learner checkpoint; resuming it with FSDP (learner.num_ranks > 1 "
                         "or learner.fsdp) is not supported yet: resume with learner.num_ranks: 1")
    state = read_learner_state(in_dir, map_location=learner.device)
    learner.model.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    learner.policy_version = state["policy_version"]
    for name in ("ref", "prev"):
        if name in state:
            setattr(learner, name, state[name])
    if "critic_model" in state and getattr(learner, "critic", None) is not None:
        learner.critic.model.load_state_dict(state["critic_model"])
        learner.critic.optimizer.load_state_dict(state["critic_optimizer"])
    rng = state["rng"]
    ck.set_rng_state({**rng, "torch": rng["torch"].cpu()})  # map_location may have moved it to the GPU
