"""`RunConfig`: the whole spec, one section per component, and the rules that span sections.

A section checks its own values in `__post_init__`; a rule that needs two sections (env episodes and the
reward, the store and the rollout batch) lives here, so that it fails at load time with one ConfigError line
naming the key to change, and so that sizes derived from several sections are computed in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlplat.config.agent import AgentConfig
from rlplat.config.algorithm import AlgorithmConfig
from rlplat.config.cluster import ClusterConfig, PlacementConfig
from rlplat.config.data import DataConfig, EvalConfig
from rlplat.config.env import EnvConfig
from rlplat.config.errors import ConfigError
from rlplat.config.experiment import CheckpointConfig, ExperimentConfig, TrackingConfig
from rlplat.config.model import LearnerConfig, ModelConfig
from rlplat.config.reward import RewardConfig
from rlplat.config.rollout import RolloutConfig
from rlplat.config.sft import SftConfig

ENV_RETURN = "env_return"  # the reward term that reads an episode's return (rlplat.rewards)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    model: ModelConfig
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    env: EnvConfig = field(default_factory=EnvConfig)  # task_id empty: no env, the `data` prompt task
    agent: AgentConfig = field(default_factory=AgentConfig)  # tools empty: no tool calling
    sft: SftConfig = field(default_factory=SftConfig)  # `rlplat sft SPEC` only; `rlplat train` ignores it

    def __post_init__(self) -> None:
        _check_env_episodes(self)
        if self.agent.tools and self.env.task_id:
            raise ConfigError("agent.tools: env.task_id is set, so env episodes are played; tool-calling "
                              "trajectories run on the `data` prompts: remove agent.tools or env.task_id")
        if self.algorithm.remix.enabled and self.learner.sharded:
            raise ConfigError("algorithm.remix: not supported with an FSDP learner (learner.num_ranks > 1 or "
                              "learner.fsdp) yet; use one learner rank, or GRPO/PPO without remix")
        if self.algorithm.dynamic_sampling.enabled and self.env.task_id:
            raise ConfigError("algorithm.dynamic_sampling: not supported with env episodes (env.task_id) yet: "
                              "their seeds follow the step number, so a second draw would replay the same episodes")

    @property
    def output_dir(self) -> Path:
        return Path(self.experiment.output_dir.replace("${name}", self.experiment.name))

    @property
    def num_samples_per_step(self) -> int:
        return self.rollout.num_prompts_per_step * self.rollout.num_samples_per_prompt

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.output_dir.resolve()}/mlflow.db"

    @property
    def store_capacity_in_groups(self) -> int:
        """Groups the experience store (`data.store`) holds before producers wait.

        `data.store.capacity_in_groups` if set, else (max_staleness + 1) * rollout.num_prompts_per_step (the
        batch being trained plus k batches produced ahead); never below one batch (num_prompts_per_step), so
        that a whole batch always fits. E.g. k = 1, N = 16: 32; capacity_in_groups 4 with N = 16: 16.
        """
        store, n = self.data.store, self.rollout.num_prompts_per_step
        return max(store.capacity_in_groups or (store.max_staleness + 1) * n, n)


def _check_env_episodes(cfg: RunConfig) -> None:
    """Env episodes (`env.task_id`) replace the `data` prompts, and their reward is the episode return."""
    scores_returns = any(t.name == ENV_RETURN for t in cfg.reward.terms)
    if not cfg.env.task_id:
        if scores_returns:
            raise ConfigError(f"reward.terms: the {ENV_RETURN} term reads episode returns, but env.task_id is not "
                              "set, so no episodes are played")
        return
    if not scores_returns:
        raise ConfigError(f"reward.terms: env.task_id is set but no term is {ENV_RETURN}, so episode returns "
                          "would be ignored")
    for name in ("train_files", "eval_files"):
        if getattr(cfg.data, name):
            raise ConfigError(f"data.{name}: env.task_id is set, so env episodes replace the dataset's prompts; "
                              f"remove data.{name} or env.task_id")
