"""RewardActor: scores batches with the spec's reward terms in its own process (`placement.reward_actor`), on the
GPU of its placement-group bundle when it has one (TensorBLEU then runs there instead of in the driver)."""

from __future__ import annotations

import ray

from rlplat.config import RewardConfig
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.registry import RewardError, combined_reward, load_reward


@ray.remote(num_cpus=1)
class RewardActor:
    def __init__(self, cfg: RewardConfig) -> None:
        self.terms = [(t.name, t.weight, load_reward(t.name, pattern=t.pattern,
                                                     target_length_in_tokens=t.target_length_in_tokens))
                      for t in cfg.terms]
        self.timeout_s = cfg.timeout_s

    def score(self, inputs: RewardInputs) -> tuple[list[float], dict[str, float]] | str:
        """(rewards, metrics), or the RewardError message (the driver re-raises it, naming the function)."""
        try:
            rewards, metrics = combined_reward(self.terms, inputs, timeout_s=self.timeout_s)
        except RewardError as e:
            return str(e)
        return rewards.tolist(), metrics

    def device(self) -> str:
        import torch

        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
