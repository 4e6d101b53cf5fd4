"""RewardActor: scores batches with the spec's reward terms in its own process (`placement.reward_actor`), on the
GPU of its placement-group bundle when it has one (TensorBLEU then runs there instead of in the driver)."""

from __future__ import annotations

import ray

from rlplat.config import RewardConfig
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.registry import RewardError, score_with_spec


@ray.remote(num_cpus=1)
class RewardActor:
    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg

    def score(self, inputs: RewardInputs) -> tuple[list[float], dict[str, float]] | str:
        """(rewards, metrics), or the RewardError message (the driver re-raises it, naming the function)."""
        try:
            return score_with_spec(self.cfg, inputs)
        except RewardError as e:
            return str(e)
