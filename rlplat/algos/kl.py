"""Per-token KL estimators and the adaptive KL coefficient.

All estimators approximate KL(pi || pi_ref) from tokens sampled from pi, given log-probs of the sampled tokens
[Schulman, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html]. One name per estimator
(verl's aliases kl/mse/low_var_kl are deliberately not accepted, so configs use one vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlplat.algos._common import LOG_RATIO_CLAMP, check_same_shape, masked_sum

# verl's clamp on the k3 value, bounding a single token's contribution.
_K3_VALUE_CLAMP = 10.0


def _k1(logp: Tensor, logp_ref: Tensor) -> Tensor:
    return logp - logp_ref


def _abs(logp: Tensor, logp_ref: Tensor) -> Tensor:
    return (logp - logp_ref).abs()


def _k2(logp: Tensor, logp_ref: Tensor) -> Tensor:
    return 0.5 * (logp - logp_ref).square()


def _k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    log_ratio = torch.clamp(logp_ref - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    value = torch.exp(log_ratio) - log_ratio - 1.0
    return torch.clamp(value, -_K3_VALUE_CLAMP, _K3_VALUE_CLAMP)


def _straight_through(forward: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def estimate(logp: Tensor, logp_ref: Tensor) -> Tensor:
        grad_path = _k2(logp, logp_ref)
        return grad_path - grad_path.detach() + forward(logp, logp_ref).detach()

    return estimate


_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": _k1,
    "abs": _abs,
    "k2": _k2,
    "k3": _k3,
    "k1+": _straight_through(_k1),
    "k3+": _straight_through(_k3),
}

KL_KINDS: tuple[str, ...] = tuple(_ESTIMATORS)


def kl_estimate(logp: Tensor, logp_ref: Tensor, kind: str, *, mask: Tensor | None = None) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi  [http://joschu.net/blog/kl-approx.html].

    With d = logp - logp_ref:
      "k1":  d                                   (unbiased, high variance, can be negative)
      "abs": |d|
      "k2":  d^2 / 2                             (its gradient is the k1 score-function gradient of KL)
      "k3":  exp(-d) - (-d) - 1 = e^(logp_ref - logp) - (logp_ref - logp) - 1   (verl low_var_kl: unbiased,
             non-negative; the log-ratio is clamped to [-20, 20] and the value to [-10, 10])
      "k1+", "k3+": straight-through: the forward value of k1/k3, the gradient of k2 (verl's "+" suffix),
             i.e. k2 - sg(k2) + sg(k1 or k3).
    Aggregate with ``losses.aggregate`` or a masked mean. Pass ``mask`` when padding may hold non-finite log-probs:
    masked entries are then 0 in the output and get exactly zero gradient.

    logp: [B, T] float32 log pi(token), differentiable. logp_ref: [B, T] float32 log pi_ref(token).
    mask: [B, T] float32 0/1 or None. Returns: [B, T] float32.
    Raises ValueError for an unknown kind or mismatched shapes.
    """
    if kind not in _ESTIMATORS:
        raise ValueError(f"unknown KL kind {kind!r}; expected one of {KL_KINDS}")
    check_same_shape(logp=logp, logp_ref=logp_ref)
    if mask is None:
        return _ESTIMATORS[kind](logp, logp_ref)
    check_same_shape(logp=logp, mask=mask)
    valid = mask > 0
    zero = torch.zeros_like(logp)
    out = _ESTIMATORS[kind](torch.where(valid, logp, zero), torch.where(valid, logp_ref, zero))
    return torch.where(valid, out, zero)


def kl_penalized_rewards(
    rewards_tok: Tensor, logp_old: Tensor, logp_ref: Tensor, mask: Tensor, *, coef: float, kind: str = "k1"
) -> Tensor:
    """In-reward KL penalty  r'_t = r_t - coef * KL_hat(pi_old || pi_ref)_t  [Ziegler et al., arXiv:1909.08593].

    As verl's apply_kl_penalty (use_kl_in_reward): the estimate is computed from the rollout policy's log-probs
    and is a constant (no gradient). Masked positions are 0 in the output.

    rewards_tok: [B, T] float32 per-token rewards. logp_old: [B, T] float32 rollout log-probs.
    logp_ref: [B, T] float32 reference log-probs. mask: [B, T] float32 0/1.
    Returns: [B, T] float32, no gradient.
    """
    check_same_shape(rewards_tok=rewards_tok, logp_old=logp_old, logp_ref=logp_ref, mask=mask)
    kl = kl_estimate(logp_old.detach(), logp_ref.detach(), kind, mask=mask)
    out = rewards_tok.detach() - coef * kl
    return torch.where(mask > 0, out, torch.zeros_like(out))


def masked_kl_mean(logp: Tensor, logp_ref: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Mean of kl_estimate over unmasked tokens (the batch KL used for logging and adaptive_kl_coef).

    logp, logp_ref, mask: [B, T] float32. Returns: 0-dim float32 (0 when the mask is empty); keeps gradient.
    """
    check_same_shape(logp=logp, logp_ref=logp_ref, mask=mask)
    return masked_sum(kl_estimate(logp, logp_ref, kind, mask=mask), mask) / mask.sum().clamp(min=1)


def adaptive_kl_coef(coef: float, observed_kl: float, *, target: float, horizon: int, n_steps: int) -> float:
    """Adaptive KL controller step  [Ziegler et al., arXiv:1909.08593, section 2.2; verl AdaptiveKLController].

      e = clip(observed_kl / target - 1, -0.2, 0.2),    coef' = coef * (1 + e * n_steps / horizon).

    coef: current coefficient beta. observed_kl: measured KL of the latest batch. target: target KL (> 0).
    horizon: controller horizon in samples/steps (> 0). n_steps: samples/steps since the last update.
    Returns the new coefficient. Raises ValueError for target <= 0 or horizon <= 0.
    """
    if target <= 0:
        raise ValueError(f"target must be > 0, got {target}")
    if horizon <= 0:
        raise ValueError(f"horizon must be > 0, got {horizon}")
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)
