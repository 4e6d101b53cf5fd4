"""ReMix pieces as pure math  ["Squeeze the Soaked Sponge", Liang et al., arXiv:2507.06892, ICLR 2026].

ReMix = (1) Mix-PPG: replay rollouts of the last N policies with probability p, using a GePPO-style clipped
objective whose clip window is centred on pi_k / pi_behaviour; (2) a KL-convex constraint
beta * [lam KL(pi || pi_base) + (1 - lam) KL(pi || pi_prev)] with a decaying lam schedule; (3) policy
reincarnation at step T_r: the KL base is reset to pi_{T_r} and replay is switched off (pure on-policy PPO/GRPO).

The official repository has no training code, so the formulas follow ALGORITHMS.md section 3 (third-party paper
notes, [SECONDARY]). Choices made where the source is unconfirmed are stated in each docstring:
- KL estimator of the KL-convex terms: "k3" (verl's low_var_kl, its GRPO default); configurable.
- The lam schedule does not restart after reincarnation unless ``restart_step`` is passed.
- The history distribution nu over lags 1..N is uniform.
- Advantages of replayed data: kept from generation time. For group estimators (GRPO, RLOO, ...) they depend only
  on the stored rewards of the group, so recomputing them gives the same numbers; for PPO with a critic the caller
  may recompute GAE with the current critic before calling ``mix_ppo_clip_loss`` (the formula's A^{pi_k}).

What stays outside as state/data plumbing: storing per-token behaviour log-probs with each rollout, recomputing
log pi_k on replayed data, keeping pi_prev (the previous iteration's weights) and pi_base, and the UTD ratio m
(number of optimizer updates per collected batch).

Step convention: ``step`` counts training iterations from 1, the same counter for lam and reincarnation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlplat.algos._common import LOG_RATIO_CLAMP, check_same_shape, clipped_surrogate, masked_mean
from rlplat.algos.kl import kl_estimate
from rlplat.algos.losses import aggregate, apply_is_weights, check_clip_range, clean_policy_inputs, ratio_metrics


def mix_ppo_clip_loss(
    logp: Tensor,
    logp_old: Tensor,
    logp_prox: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token-mean",
    is_weights: Tensor | None = None,
    norm_len: int | None = None,
    group_ids: Tensor | None = None,
    global_count: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mix-policy proximal policy gradient (Mix-PPG)  [ReMix arXiv:2507.06892 section 3; GePPO, Queeney et al.,
    arXiv:2111.00072].

      r_t = pi_theta / pi_{k-i} = exp(clamp(logp_t - logp_old_t, -20, 20))     (ratio to the behaviour policy)
      c_t = pi_k / pi_{k-i}     = exp(clamp(logp_prox_t - logp_old_t, -20, 20))  (clip centre, constant)
      l_t = max(-A_t r_t, -A_t clip(r_t, c_t - clip_low, c_t + clip_high))
      loss = aggregate(w_t * l_t, mask, agg)
    For fresh data logp_prox == logp_old, so c = 1 and this is PPO-clip exactly; a batch may mix fresh and replayed
    rows. Asymmetric bounds (clip-higher) are allowed as in ppo_clip_loss; there is no dual clip.

    logp: [B, T] float32 log pi_theta (gets gradient).
    logp_old: [B, T] float32 log pi_{k-i}, stored with the rollout by the policy that generated it (detached).
    logp_prox: [B, T] float32 log pi_k, the pre-update policy of this iteration recomputed on the data (detached).
    adv: [B, T] float32 (detached). mask: [B, T] float32 0/1. is_weights: [B, T] float32 or None.
    Returns (loss 0-dim, metrics): "clip_frac" (share of unmasked tokens with the clipped term active),
    "approx_kl" (mean k3 estimate of KL(pi_k || pi_theta)), "ratio_mean" (mean r), "centre_mean" (mean c).
    Raises ValueError for mismatched shapes or negative clip ranges.
    """
    check_clip_range(clip_low, clip_high)
    logp, logp_old, adv = clean_policy_inputs(logp, logp_old, adv, mask, is_weights)
    check_same_shape(logp=logp, logp_prox=logp_prox)
    logp_prox = torch.where(mask > 0, logp_prox.detach(), torch.zeros_like(logp))

    ratio = torch.exp(torch.clamp(logp - logp_old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    centre = torch.exp(torch.clamp(logp_prox - logp_old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    tok_loss, clipped = clipped_surrogate(ratio, adv, centre - clip_low, centre + clip_high)
    loss = aggregate(apply_is_weights(tok_loss, is_weights), mask, agg, norm_len=norm_len, group_ids=group_ids,
                     global_count=global_count)
    metrics = ratio_metrics(logp, logp_prox, ratio, mask)  # approx_kl: KL(pi_k || pi_theta)
    metrics["clip_frac"] = masked_mean(clipped.to(logp.dtype), mask)
    metrics["centre_mean"] = masked_mean(centre, mask)
    return loss, metrics


def kl_convex_penalty(
    logp: Tensor,
    logp_base: Tensor,
    logp_prev: Tensor,
    *,
    lam: float,
    kind: str = "k3",
    mask: Tensor | None = None,
) -> Tensor:
    """Per-token KL-convex constraint  lam * KL(pi || pi_base) + (1 - lam) * KL(pi || pi_prev)
    [ReMix arXiv:2507.06892 section 3.2].

    Each KL is estimated per token with ``kl_estimate(logp, logp_x, kind)`` on tokens sampled by the rollout
    policy. The estimator is unconfirmed in the source; the default "k3" is verl's low_var_kl (GRPO default).
    The caller aggregates (e.g. ``aggregate(pen, mask, "token-mean")``) and scales by beta:
    L = L_policy + beta * aggregate(pen).

    logp: [B, T] float32 log pi_theta (gets gradient). logp_base: [B, T] float32 log pi_base (the initial model,
    or pi_{T_r} after reincarnation). logp_prev: [B, T] float32 log pi_{k-1}, the previous iteration's policy.
    lam: weight in [0, 1], usually ``kl_convex_lambda(step)``. mask: [B, T] float32 0/1 or None (passed to
    kl_estimate: masked entries are 0 with zero gradient). Returns: [B, T] float32.
    Raises ValueError for lam outside [0, 1], bad shapes or an unknown kind.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    check_same_shape(logp=logp, logp_base=logp_base, logp_prev=logp_prev)
    to_base = kl_estimate(logp, logp_base.detach(), kind, mask=mask)
    to_prev = kl_estimate(logp, logp_prev.detach(), kind, mask=mask)
    return lam * to_base + (1.0 - lam) * to_prev


def kl_convex_lambda(
    step: int,
    *,
    start: int = 50,
    interval: int = 10,
    decrement: float = 0.1,
    floor: float = 0.5,
    restart_step: int | None = None,
) -> float:
    """ReMix lam schedule  lam(t) = max(1 - decrement * ceil(max(t - start, 0) / interval), floor)
    [ReMix arXiv:2507.06892 section 3.2; defaults: 1 until step 50, -0.1 every 10 steps, floor 0.5].

    Whether lam restarts after policy reincarnation is unconfirmed in the source. Default: no restart (lam is a
    function of the global step). With restart_step=T_r, steps after T_r use t - T_r instead.

    step: training iteration, counted from 1. Returns lam in [floor, 1].
    Raises ValueError for interval <= 0 or floor outside [0, 1].
    """
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    t = step - restart_step if restart_step is not None and step > restart_step else step
    num_decays = -(-max(t - start, 0) // interval)  # ceil division on ints
    return max(1.0 - decrement * num_decays, floor)


def replay_enabled(step: int, *, reincarnation_step: int | None) -> bool:
    """Whether Mix-PPG replay is on at ``step``  [ReMix arXiv:2507.06892 section 3.3, policy reincarnation].

    Replay (and the KL base pi_0) is used for step <= T_r; from T_r + 1 on, training is on-policy and the KL base is
    pi_{T_r} (the caller snapshots the weights at the end of step T_r). reincarnation_step=None: never reincarnate.
    Paper settings: T_r in {50, 100} for ReMix-PPO, 50 for ReMix-GRPO.
    """
    return reincarnation_step is None or step <= reincarnation_step


def updates_per_batch(step: int, *, update_to_data: int, base_updates: int, reincarnation_step: int | None,
                      base_after_reincarnation: bool) -> int:
    """Optimizer updates on the rollout batch of ``step``: the UTD ratio m while Mix-PPG is on; after the
    reincarnation step T_r, with ``base_after_reincarnation``, the base algorithm's ``base_updates``.

    The paper's reincarnation returns to "pure on-policy PPO/GRPO"; whether the higher UTD ratio (one of Mix-PPG's
    ablated parts) stays on after it is unconfirmed in the source, so it is the spec value
    ``remix.base_updates_after_reincarnation``: true ends m with replay, as part of the off-policy phase; false (the
    default) keeps m. On the demo task (BENCHMARKS.md) true stopped m = 4 runs from falling back late, and made
    m = 2 runs no better.
    """
    if base_after_reincarnation and not replay_enabled(step, reincarnation_step=reincarnation_step):
        return base_updates
    return update_to_data


def sample_replay_lags(
    num_minibatches: int, *, p_off: float, window: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draw the data source of each minibatch for Mix-PPG  [ReMix arXiv:2507.06892 section 3.1].

    With probability 1 - p_off a minibatch is fresh (lag 0, rollouts of pi_k); with probability p_off it is replayed
    from pi_{k-i} with lag i ~ nu over {1, ..., window}. nu is unconfirmed in the source; here it is uniform.
    Paper settings: p_off = 0.4, window N = 2. Early in training, when fewer than ``window`` past batches exist,
    the caller clamps the lag to what is available.

    Returns: [num_minibatches] int64 lags in [0, window]. Raises ValueError for p_off outside [0, 1], window < 1
    or a negative num_minibatches.
    """
    if not 0.0 <= p_off <= 1.0:
        raise ValueError(f"p_off must be in [0, 1], got {p_off}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if num_minibatches < 0:
        raise ValueError(f"num_minibatches must be >= 0, got {num_minibatches}")
    off = torch.rand(num_minibatches, generator=generator) < p_off
    lags = torch.randint(1, window + 1, (num_minibatches,), generator=generator)
    return torch.where(off, lags, torch.zeros_like(lags))
