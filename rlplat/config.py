"""Experiment spec: YAML -> nested frozen dataclasses, strictly checked.

An unknown key, a wrong type, a missing required value or a bad value raises `ConfigError` naming the file and
the key path (`rollout.num_samples_per_prompt`). One `base: other.yaml` include is allowed per file; command-line
overrides are `a.b=value` (the value is parsed as YAML). Every component receives only its own sub-config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A spec problem the user must fix; the message names the file and key path."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True, kw_only=True, slots=True)
class ExperimentConfig:
    name: str = "rlplat"
    seed: int = 0
    num_steps: int = 100
    output_dir: str = "outputs/${name}"  # ${name} is replaced by experiment.name

    def __post_init__(self) -> None:
        _check(self.num_steps >= 1, "must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    path: str  # a local Hugging Face model directory (`rlplat model tiny DIR` writes one)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutConfig:
    num_prompts_per_step: int = 16  # groups per training step (N)
    num_samples_per_prompt: int = 8  # group size
    max_new_tokens: int = 16  # response budget per sample
    temperature: float = 1.0
    top_p: float = 1.0
    num_workers: int = 1  # vLLM engines, one Ray actor each
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True

    def __post_init__(self) -> None:
        for name in ("num_prompts_per_step", "num_samples_per_prompt", "max_new_tokens", "num_workers"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        _check(self.temperature > 0, "temperature must be > 0")
        _check(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization must be in (0, 1]")


@dataclass(frozen=True, kw_only=True, slots=True)
class AlgorithmConfig:
    advantage: Literal["grpo", "drgrpo", "rloo", "reinforce_pp"] = "grpo"
    policy_loss: Literal["ppo", "cispo", "gspo"] = "ppo"
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0  # KL-to-reference loss weight; 0 disables the reference model
    kl_kind: Literal["k1", "k2", "k3", "abs"] = "k3"
    num_updates_per_batch: int = 1  # optimizer steps (mini-batches) per rollout batch

    def __post_init__(self) -> None:
        _check(self.clip_low >= 0 and self.clip_high >= 0, "clip bounds must be >= 0")
        _check(self.kl_coef >= 0, "kl_coef must be >= 0")
        _check(self.num_updates_per_batch >= 1, "num_updates_per_batch must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardTerm:
    name: str  # a built-in reward (`rlplat.rewards.registry.BUILTIN_REWARDS`) or `path/to/file.py:function`
    weight: float = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardConfig:
    terms: tuple[RewardTerm, ...] = (RewardTerm(name="digit_accuracy"),)

    def __post_init__(self) -> None:
        _check(len(self.terms) >= 1, "terms must name at least one reward")


@dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    task: Literal["copy", "reverse", "add"] = "reverse"
    num_digits: int = 4
    num_train_prompts: int = 2048
    num_eval_prompts: int = 128
    seed: int = 1234

    def __post_init__(self) -> None:
        _check(1 <= self.num_digits <= 16, "num_digits must be in [1, 16]")
        _check(self.num_train_prompts >= 1 and self.num_eval_prompts >= 1, "prompt counts must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class LearnerConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip_norm: float = 1.0
    warmup_steps: int = 0
    micro_batch_size_in_tokens: int = 4096  # token budget per forward/backward; sequences are packed into it

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr must be > 0")
        _check(self.grad_clip_norm > 0, "grad_clip_norm must be > 0")
        _check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _check(self.micro_batch_size_in_tokens >= 1, "micro_batch_size_in_tokens must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterConfig:
    address: str = "auto"  # "auto": attach to a running Ray cluster if there is one, else start a local one
    num_cpus: int = 8  # logical CPUs for a local Ray (TransferQueue actors each ask for one)
    dashboard_host: str = "127.0.0.1"


@dataclass(frozen=True, kw_only=True, slots=True)
class TrackingConfig:
    uri: str = ""  # empty: sqlite:///<output_dir>/mlflow.db
    experiment_name: str = "rlplat"
    log_samples_every_steps: int = 10
    num_logged_samples: int = 8

    def __post_init__(self) -> None:
        _check(self.log_samples_every_steps >= 1, "log_samples_every_steps must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointConfig:
    every_steps: int = 0  # 0: only at the end
    keep_last: int = 2

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "every_steps must be >= 0")
        _check(self.keep_last >= 1, "keep_last must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    model: ModelConfig
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.experiment.output_dir.replace("${name}", self.experiment.name))

    @property
    def num_samples_per_step(self) -> int:
        return self.rollout.num_prompts_per_step * self.rollout.num_samples_per_prompt

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.output_dir.resolve()}/mlflow.db"


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML spec (with at most one `base:` include) and `a.b=value` overrides into a `RunConfig`."""
    raw = _read_yaml_with_base(Path(path))
    for item in overrides:
        _apply_override(raw, item, path)
    try:
        return build(RunConfig, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def build(cls: type, raw: Any, where: str) -> Any:
    """Construct dataclass `cls` from a mapping, checking keys and types; `where` is the key path so far."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'spec'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key (valid keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: required key is missing")
    try:
        return cls(**kwargs)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where or 'spec'}: {e}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    return _coerce_scalar(tp, value, where)


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}")


def _read_yaml_with_base(path: Path) -> dict:
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_raw = _read_yaml(path.parent / base)
    if "base" in base_raw:
        raise ConfigError(f"{path.parent / base}: at most one level of `base:` is allowed")
    return _merge(base_raw, raw)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"spec file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the spec must be a mapping at the top level")
    return raw


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(raw: dict, item: str, path: str | Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a mapping in {path}")
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: value is not valid YAML") from None


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def to_dict(cfg: Any) -> Any:
    """A plain-data view of a config (for YAML dumps and MLflow params)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become their repr."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
