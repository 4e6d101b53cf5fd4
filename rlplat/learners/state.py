"""Save and restore everything a PolicyLearner needs to continue bit-for-bit: weights (LoRA adapters included),
optimizer and scheduler state, the policy version, frozen reference snapshots, the critic, and RNG states."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_learner_state(learner: Any, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "model": learner.model.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "policy_version": learner.policy_version,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
    }
    for name in ("ref", "prev"):  # frozen snapshots (ReMix reference / previous policy), not the LoRA base
        frozen = getattr(learner, name, None)
        if isinstance(frozen, dict):
            state[name] = frozen
    critic = getattr(learner, "critic", None)
    if critic is not None:
        state["critic_model"] = critic.model.state_dict()
        state["critic_optimizer"] = critic.optimizer.state_dict()
    torch.save(state, out / "learner_state.pt")


def load_learner_state(learner: Any, in_dir: str | Path) -> None:
    state = torch.load(Path(in_dir) / "learner_state.pt", map_location=learner.device, weights_only=False)
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
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
