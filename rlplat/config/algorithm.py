"""`algorithm:`: advantage estimator, policy loss and their options (GAE, ReMix, dynamic sampling)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlplat.config.errors import check


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
        check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma and lam must be in [0, 1]")
        check(self.critic_lr is None or self.critic_lr > 0, "critic_lr must be > 0")
        check(self.value_clip is None or self.value_clip > 0, "value_clip must be > 0 (or null for no clipping)")
        check(self.kl_in_reward_coef >= 0, "kl_in_reward_coef must be >= 0")


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
        check(self.coef >= 0, "coef must be >= 0")
        check(self.lambda_interval >= 1, "lambda_interval must be >= 1")
        check(0 <= self.lambda_floor <= 1, "lambda_floor must be in [0, 1]")


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
        check(self.replay_versions >= 1, "replay_versions must be >= 1")
        check(0 <= self.p_off_policy < 1, "p_off_policy must be in [0, 1)")
        check(self.update_to_data >= 1, "update_to_data must be >= 1")
        check(self.reincarnation_step is None or self.reincarnation_step >= 1, "reincarnation_step must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class DynamicSamplingConfig:
    """DAPO dynamic sampling (arXiv:2503.14476): a group whose rewards all agree carries no GRPO signal; it is
    dropped and more prompts are drawn until rollout.num_prompts_per_step groups carry signal, for at most
    `max_draw_rounds` draws per step (then the step trains on what it has; the shortfall is counted and logged)."""

    enabled: bool = False
    max_draw_rounds: int = 3  # draws of fresh prompts per step, the first one included

    def __post_init__(self) -> None:
        check(self.max_draw_rounds >= 1, "max_draw_rounds must be >= 1")


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
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)

    def __post_init__(self) -> None:
        check(self.clip_low >= 0 and self.clip_high >= 0, "clip bounds must be >= 0")
        check(self.kl_coef >= 0, "kl_coef must be >= 0")
        check(self.num_updates_per_batch >= 1, "num_updates_per_batch must be >= 1")
        if self.advantage == "gae" and self.gae is None:
            object.__setattr__(self, "gae", GaeConfig())
        check(self.advantage == "gae" or self.gae is None,
               f"gae options apply only to advantage 'gae' (advantage is {self.advantage!r})")
        if self.off_policy == "tis" and self.tis_cap is None:
            object.__setattr__(self, "tis_cap", 2.0)
        check(self.off_policy == "tis" or self.tis_cap is None,
               f"tis_cap applies only to off_policy 'tis' (off_policy is {self.off_policy!r}; valid: all, mask, tis)")
        check(self.tis_cap is None or self.tis_cap > 0, "tis_cap must be > 0")
        if self.remix.enabled:
            _check_remix(self)


def _check_remix(algo: AlgorithmConfig) -> None:
    check(algo.policy_loss == "ppo",
           f"remix needs policy_loss 'ppo' (Mix-PPG is a clipped objective); got {algo.policy_loss!r}")
    check(algo.off_policy == "all",
           f"off_policy {algo.off_policy!r} does not apply with remix (Mix-PPG corrects stale tokens itself); "
           "use 'all'")
    check(algo.num_updates_per_batch == 1, "with remix, set remix.update_to_data instead of num_updates_per_batch")
    check(algo.kl_coef == 0, "with remix, the KL term is remix.kl_convex.coef (set kl_coef to 0)")
