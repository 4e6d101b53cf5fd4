"""`experiment:`, `tracking:` and `checkpoint:`: a run's name and length, its MLflow run, its checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlplat.config.errors import check


@dataclass(frozen=True, kw_only=True, slots=True)
class ExperimentConfig:
    name: str = "rlplat"
    seed: int = 0
    num_steps: int = 100
    output_dir: str = "outputs/${name}"  # ${name} is replaced by experiment.name

    def __post_init__(self) -> None:
        check(self.num_steps >= 1, "num_steps must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrackingConfig:
    uri: str = ""  # empty: sqlite:///<output_dir>/mlflow.db
    experiment_name: str = "rlplat"
    log_samples_every_steps: int = 10
    num_logged_samples: int = 8
    system_metrics_interval_s: float = 10.0  # 0 disables CPU/memory/GPU system metrics
    registered_model_name: str = ""  # the final policy is registered under this name ("" = experiment.name)

    def __post_init__(self) -> None:
        check(self.log_samples_every_steps >= 1, "log_samples_every_steps must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointConfig:
    every_steps: int = 0  # also at the last step; 0: never (the final policy is always saved in final_model/)
    keep_last: int = 2
    resume: Literal["never", "auto"] = "never"  # auto: continue from the latest checkpoint in output_dir if any

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "every_steps must be >= 0")
        check(self.keep_last >= 1, "keep_last must be >= 1")
