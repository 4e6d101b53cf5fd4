"""LearnerActor: owns one PolicyLearner and forwards calls."""

from __future__ import annotations

import ray

from rlplat.config import AlgorithmConfig, LearnerConfig, LoraConfig
from rlplat.learners.policy import PolicyLearner
from rlplat.types import TrainBatch


@ray.remote(num_cpus=1)
class LearnerActor:
    def __init__(self, model_path: str, cfg: LearnerConfig, algo: AlgorithmConfig, *, dtype: str, seed: int,
                 lora: LoraConfig | None = None) -> None:
        self.learner = PolicyLearner(model_path, cfg, algo, dtype=dtype, seed=seed, lora=lora)

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        return self.learner.train_step(batch)

    def weights_bytes(self) -> bytes:
        return self.learner.weights_bytes()

    def engine_layout_checksum(self, names: list[str]) -> str:
        return self.learner.engine_layout_checksum(names)

    def sequence_logps(self, token_ids: list[int]) -> list[float]:
        return self.learner.sequence_logps(token_ids)

    def save(self, out_dir: str) -> None:
        self.learner.save(out_dir)

    def save_state(self, out_dir: str) -> None:
        from rlplat.learners.state import save_learner_state

        save_learner_state(self.learner, out_dir)

    def load_state(self, in_dir: str) -> None:
        from rlplat.learners.state import load_learner_state

        load_learner_state(self.learner, in_dir)
