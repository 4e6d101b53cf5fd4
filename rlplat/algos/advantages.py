"""Advantage estimators (outcome-level and GAE) and whitening.

Outcome-level estimators take one scalar reward per sample: ``rewards: [N] f32``, ``group_ids: [N] int64`` (the
samples of one prompt share an id; ids need not be contiguous or sorted) and return ``[N] f32`` advantages, which
the caller broadcasts over the response tokens (``adv[:, None] * mask``). They are computed without gradient
(inputs are detached). Grouped statistics are vectorised with ``index_add``; there is no Python loop over groups.

``ADVANTAGE_FNS`` at the bottom maps a config name to a function with the common signature
``(rewards [N], group_ids [N], greedy_rewards [N] | None) -> [N]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlplat.algos._common import (
    as_float_rewards,
    check_group_ids,
    check_ndim,
    check_same_shape,
    group_index,
    group_mean_std,
    weighted_whiten,
)


def grpo_advantages(rewards: Tensor, group_ids: Tensor, *, std_normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantage  A_i = (r_i - mean_g(r)) / (std_g(r) + eps)  [DeepSeekMath, arXiv:2402.03300].

    std_g is the unbiased (Bessel-corrected, torch.std default) std of the rewards in sample i's group, as in verl.
    With std_normalize=False this is the Dr.GRPO mean baseline A_i = r_i - mean_g(r)  [arXiv:2503.20783].
    A group of size 1 gets mean 0 and std 1 (verl's convention), so its advantage is r_i / (1 + eps).

    rewards: [N] float32 (integer/bool are cast to float32), one scalar per sample.
    group_ids: [N] int64, samples of one prompt share an id.
    Returns: [N] float32 (rewards' float dtype), no gradient.
    """
    r = as_float_rewards(rewards)
    check_group_ids(group_ids, r.shape[0])
    if r.numel() == 0:
        return r.clone()
    inv, num_groups = group_index(group_ids)
    count, mean, std = group_mean_std(r, inv, num_groups)
    singleton = count < 2
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    std = torch.where(singleton, torch.ones_like(std), std)
    adv = r - mean[inv]
    if std_normalize:
        adv = adv / (std[inv] + eps)
    return adv


def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """REINFORCE leave-one-out:  A_i = r_i - mean_{j in g, j != i} r_j = n/(n-1) * (r_i - mean_g(r))
    [Ahmadian et al., arXiv:2402.14740].

    n is the size of sample i's group. A group of size 1 has no other sample, so its baseline is 0 and A_i = r_i
    (verl's convention).

    rewards: [N] float32, group_ids: [N] int64. Returns: [N] float32, no gradient.
    """
    r = as_float_rewards(rewards)
    check_group_ids(group_ids, r.shape[0])
    if r.numel() == 0:
        return r.clone()
    inv, num_groups = group_index(group_ids)
    count, mean, _ = group_mean_std(r, inv, num_groups)
    n = count[inv]
    loo = n / (n - 1).clamp(min=1) * (r - mean[inv])
    return torch.where(n > 1, loo, r)


def reinforce_pp_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    response_lengths: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++-baseline  [Hu et al., arXiv:2501.03262; verl adv_estimator=reinforce_plus_plus_baseline].

    Exactly two steps:
      1. group-mean baseline  a_i = r_i - mean_g(r)   (a group of size 1 has mean 0, so a_i = r_i);
      2. batch whitening over the whole batch  A_i = (a_i - mu) / sqrt(var + eps), with weights w_i:
         mu = sum_i w_i a_i / sum_i w_i,   var = sum_i w_i (a_i - mu)^2 / (sum_i w_i - 1).
    verl whitens the advantage broadcast over every response token, so each sample is weighted by its token count:
    pass ``response_lengths`` for that exact behaviour. Without it every sample has weight 1 (var is the unbiased
    sample variance over the N advantages). This is not verl's ``reinforce_plus_plus`` (discounted token returns).

    rewards: [N] float32, group_ids: [N] int64, response_lengths: [N] (int or float) tokens per response or None.
    Returns: [N] float32, no gradient. Raises ValueError if the total weight is <= 1.
    """
    r = as_float_rewards(rewards)
    check_group_ids(group_ids, r.shape[0])
    if response_lengths is None:
        weight = torch.ones_like(r)
    else:
        check_same_shape(rewards=r, response_lengths=response_lengths)
        weight = response_lengths.detach().to(r.dtype)
    centred = grpo_advantages(r, group_ids, std_normalize=False)
    return weighted_whiten(centred, weight, shift_mean=True, eps=eps)


def remax_advantages(rewards: Tensor, greedy_rewards: Tensor) -> Tensor:
    """ReMax greedy baseline  A_i = r(x_i, a_i) - r(x_i, greedy(x_i))  [Li et al., arXiv:2310.10505].

    rewards: [N] float32, reward of each sampled response.
    greedy_rewards: [N] float32, reward of the greedy decode of the same prompt (repeat it for every sample of a
    prompt). Returns: [N] float32, no gradient.
    """
    r = as_float_rewards(rewards)
    g = as_float_rewards(greedy_rewards)
    check_same_shape(rewards=r, greedy_rewards=g)
    return r - g


def batch_normalize(adv: Tensor, *, eps: float = 1e-6) -> Tensor:
    """ScaleRL batch-level normalisation  A_i^norm = A_i / (std_batch(A) + eps)  [ScaleRL, arXiv:2510.13786].

    std_batch is the unbiased std over every element of ``adv`` (the whole batch); no mean is subtracted (ScaleRL
    applies it to group-mean-centred advantages). With fewer than 2 elements the std is undefined and ``adv`` is
    returned unchanged (std treated as 1, like a singleton group in grpo_advantages).

    adv: [N] float32 (any shape is accepted; the std is over all elements). Returns: same shape/dtype, no gradient.
    """
    a = adv.detach()
    if a.numel() < 2:
        return a.clone()
    return a / (a.std() + eps)


def gae(rewards_tok: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation by a reverse scan over T  [Schulman et al., arXiv:1506.02438].

    Over the unmasked tokens t of a row, with t' the next unmasked token after t (V_{t'} = 0 if there is none):
      delta_t = r_t + gamma * V_{t'} - V_t,    A_t = delta_t + gamma * lam * A_{t'},    ret_t = A_t + V_t.
    Masked positions (padding, or environment tokens inside a multi-turn response) are skipped: their reward and
    value are ignored, and the scan carries V and A across them unchanged (as verl does). The outputs are 0 at
    masked positions. No whitening is applied; verl whitens the advantages afterwards with ``whiten(adv, mask)``.

    rewards_tok: [B, T] float32 per-token rewards (outcome reward on the last response token, plus any KL penalty).
    values: [B, T] float32 critic values V(s_t) (detached here). mask: [B, T] float32 0/1.
    Returns: (adv [B, T] float32, ret [B, T] float32), no gradient.
    """
    check_ndim("rewards_tok", rewards_tok, 2)
    check_same_shape(rewards_tok=rewards_tok, values=values, mask=mask)
    r, v = rewards_tok.detach(), values.detach()
    valid = mask > 0
    next_value = torch.zeros_like(v[:, 0])
    last_adv = torch.zeros_like(v[:, 0])
    adv = torch.zeros_like(v)
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        last_adv = torch.where(valid[:, t], delta + gamma * lam * last_adv, last_adv)
        next_value = torch.where(valid[:, t], v[:, t], next_value)
        adv[:, t] = last_adv
    zero = torch.zeros_like(adv)
    adv = torch.where(valid, adv, zero)
    ret = torch.where(valid, adv + v, zero)
    return adv, ret


def whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Masked whitening  (x - mu) * rsqrt(var + eps)  as verl's masked_whiten  [Ziegler et al., arXiv:1909.08593].

    mu = masked mean of x, var = masked variance with Bessel correction (sum(m (x - mu)^2) / (sum(m) - 1)).
    With shift_mean=False the mean is added back (only the scale changes). Masked positions are 0 in the output.

    x: [B, T] float32 (any shape matching mask). mask: same shape, float32 0/1.
    Returns: same shape/dtype as x; differentiable. Raises ValueError with fewer than 2 unmasked elements.
    """
    check_same_shape(x=x, mask=mask)
    out = weighted_whiten(x, mask.to(x.dtype), shift_mean=shift_mean, eps=eps)
    return torch.where(mask > 0, out, torch.zeros_like(out))


# ---- Common outcome-reward signature: (rewards [N], group_ids [N], greedy_rewards [N] | None) -> adv [N] ----

OutcomeAdvantageFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _grpo(rewards: Tensor, group_ids: Tensor, greedy_rewards: Tensor | None) -> Tensor:
    return grpo_advantages(rewards, group_ids, std_normalize=True)


def _drgrpo(rewards: Tensor, group_ids: Tensor, greedy_rewards: Tensor | None) -> Tensor:
    return grpo_advantages(rewards, group_ids, std_normalize=False)


def _rloo(rewards: Tensor, group_ids: Tensor, greedy_rewards: Tensor | None) -> Tensor:
    return rloo_advantages(rewards, group_ids)


def _reinforce_pp(rewards: Tensor, group_ids: Tensor, greedy_rewards: Tensor | None) -> Tensor:
    return reinforce_pp_advantages(rewards, group_ids)


def _remax(rewards: Tensor, group_ids: Tensor, greedy_rewards: Tensor | None) -> Tensor:
    if greedy_rewards is None:
        raise ValueError("remax needs greedy_rewards (the reward of each prompt's greedy decode)")
    return remax_advantages(rewards, greedy_rewards)


def _scalerl(rewards: Tensor, group_ids: Tensor, greedy_rewards: Tensor | None) -> Tensor:
    # ScaleRL: group-mean baseline, then divide by the batch std (arXiv:2510.13786, recipe item 5).
    return batch_normalize(grpo_advantages(rewards, group_ids, std_normalize=False))


ADVANTAGE_FNS: dict[str, OutcomeAdvantageFn] = {
    "grpo": _grpo,
    "drgrpo": _drgrpo,
    "rloo": _rloo,
    "reinforce_pp": _reinforce_pp,
    "remax": _remax,
    "scalerl": _scalerl,
}
