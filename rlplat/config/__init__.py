"""Experiment spec: YAML -> nested frozen dataclasses, strictly checked.

An unknown key, a wrong type, a missing required value or a bad value raises `ConfigError` naming the file and
the key path (`rollout.num_samples_per_prompt`). One `base: other.yaml` include is allowed per file; command-line
overrides are `a.b=value` (the value is parsed as YAML). Every component receives only its own sub-config.

One module per area, each section checking its own values; `run.RunConfig` holds the rules that span sections:

    model.py       model:, learner:        ModelConfig, LoraConfig, LearnerConfig
    rollout.py     rollout:                RolloutConfig, PartialRolloutConfig (APRIL)
    algorithm.py   algorithm:              AlgorithmConfig, GaeConfig, RemixConfig, KlConvexConfig,
                                           DynamicSamplingConfig
    reward.py      reward:                 RewardConfig, RewardTerm
    data.py        data:, eval:            DataConfig, StoreConfig, EvalConfig
    env.py         env:                    EnvConfig
    agent.py       agent:                  AgentConfig, SandboxConfig
    cluster.py     cluster:, placement:    ClusterConfig, PlacementConfig
    experiment.py  experiment:, tracking:, checkpoint:   ExperimentConfig, TrackingConfig, CheckpointConfig
    sft.py         sft:                    SftConfig (`rlplat sft`, the warm start before RL)
    run.py         the whole spec          RunConfig (cross-section rules, derived sizes)
    loader.py      YAML -> RunConfig       load_config, build, to_dict, flatten, dump_yaml
    errors.py                              ConfigError
"""

from rlplat.config.agent import AgentConfig, SandboxConfig
from rlplat.config.algorithm import (
    AlgorithmConfig,
    DynamicSamplingConfig,
    GaeConfig,
    KlConvexConfig,
    RemixConfig,
)
from rlplat.config.cluster import ClusterConfig, PlacementConfig
from rlplat.config.data import DataConfig, EvalConfig, StoreConfig
from rlplat.config.env import EnvConfig
from rlplat.config.errors import ConfigError
from rlplat.config.experiment import CheckpointConfig, ExperimentConfig, TrackingConfig
from rlplat.config.loader import build, dump_yaml, flatten, load_config, to_dict
from rlplat.config.model import LearnerConfig, LoraConfig, ModelConfig
from rlplat.config.reward import RewardConfig, RewardTerm
from rlplat.config.rollout import PartialRolloutConfig, RolloutConfig
from rlplat.config.run import RunConfig
from rlplat.config.sft import SftConfig

__all__ = [
    "AgentConfig",
    "AlgorithmConfig",
    "CheckpointConfig",
    "ClusterConfig",
    "ConfigError",
    "DataConfig",
    "DynamicSamplingConfig",
    "EnvConfig",
    "EvalConfig",
    "ExperimentConfig",
    "GaeConfig",
    "KlConvexConfig",
    "LearnerConfig",
    "LoraConfig",
    "ModelConfig",
    "PartialRolloutConfig",
    "PlacementConfig",
    "RemixConfig",
    "RewardConfig",
    "RewardTerm",
    "RolloutConfig",
    "RunConfig",
    "SandboxConfig",
    "SftConfig",
    "StoreConfig",
    "TrackingConfig",
    "build",
    "dump_yaml",
    "flatten",
    "load_config",
    "to_dict",
]
