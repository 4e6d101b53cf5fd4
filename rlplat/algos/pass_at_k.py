"""Evaluation estimators over k sampled responses per prompt: unbiased pass@k and mean@k.

Both take the n >= k responses sampled for each of P prompts and estimate what k fresh samples would score, so
an eval that draws n = 16 samples reports pass@1, pass@4 and pass@16 from one set of generations.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pass_at_k(num_correct: Tensor, num_samples: Tensor | int, k: int) -> Tensor:
    """Unbiased pass@k per prompt  [Chen et al. 2021, "Evaluating LLMs Trained on Code", arXiv:2107.03374]:

        pass@k = 1 - C(n - c, k) / C(n, k)

    the probability that at least one of k responses drawn without replacement from the n sampled ones is
    correct, when c of the n are. It is 1 when n - c < k (every k-subset holds a correct one). Computed as
    exp(lgamma) differences in float64, so n in the thousands neither overflows nor loses the small terms.
    Average the result over prompts for the benchmark's pass@k.

    num_correct: [P] int64 (or bool/float holding whole numbers), c per prompt, 0 <= c <= n.
    num_samples: [P] int64 or one int, n per prompt; n >= k.
    k: int >= 1.
    Returns: [P] float32 in [0, 1].

    >>> pass_at_k(torch.tensor([0, 1, 2, 4]), 4, 2).tolist()
    [0.0, 0.5, 0.8333333134651184, 1.0]

    Raises ValueError if k < 1, some n < k, or some c is outside [0, n].
    """
    c = torch.as_tensor(num_correct).to(torch.float64)
    if c.ndim != 1:
        raise ValueError(f"num_correct must be [P], got shape {tuple(c.shape)}")
    n = torch.as_tensor(num_samples, dtype=torch.float64).expand_as(c)
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got {k}")
    if bool((n < k).any()):
        raise ValueError(f"pass@{k} needs at least k samples per prompt, got n = {int(n.min())}")
    if bool(((c < 0) | (c > n) | (c != c.round())).any()):
        raise ValueError("num_correct must hold whole numbers in [0, num_samples]")
    fail = n - c  # responses that are wrong
    has_fail_set = fail >= k
    # log C(n-c, k) - log C(n, k) = lgamma(n-c+1) - lgamma(n-c-k+1) - lgamma(n+1) + lgamma(n-k+1)
    safe_fail = torch.where(has_fail_set, fail, torch.full_like(fail, float(k)))
    log_ratio = (torch.lgamma(safe_fail + 1) - torch.lgamma(safe_fail - k + 1)
                 - torch.lgamma(n + 1) + torch.lgamma(n - k + 1))
    estimate = (1.0 - torch.exp(log_ratio)).clamp(0.0, 1.0)
    estimate = torch.where(c == 0, torch.zeros_like(c), estimate)  # exact 0, not lgamma's rounding residue
    return torch.where(has_fail_set, estimate, torch.ones_like(c)).float()


def pass_at_k_from_rewards(rewards: Tensor, k: int, *, threshold: float = 1.0) -> Tensor:
    """pass@k per prompt where a response counts as correct when its reward >= `threshold`.

    rewards: [P, n] float32, the n sampled responses of each of P prompts. Returns [P] float32.

    >>> pass_at_k_from_rewards(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.1, 0.1, 1.0, 1.0]]), 2).tolist()
    [0.5, 0.8333333134651184]
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [P, n], got shape {tuple(rewards.shape)}")
    return pass_at_k((rewards >= threshold).sum(dim=1), rewards.shape[1], k)


def mean_at_k(rewards: Tensor, k: int) -> Tensor:
    """mean@k per prompt: the expected mean reward of k responses, E[(1/k) sum_{j<=k} r_j].

    Every response is equally likely to be among k drawn without replacement from the n sampled, so the
    unbiased estimate is the mean over all n (for n = k it is the plain average, "avg@k"); k only checks n >= k.

    rewards: [P, n] float32. Returns [P] float32.

    >>> mean_at_k(torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0]]), 4).tolist()
    [0.5, 0.25]

    Raises ValueError if rewards is not [P, n] or n < k.
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [P, n], got shape {tuple(rewards.shape)}")
    if k < 1 or rewards.shape[1] < k:
        raise ValueError(f"mean@{k} needs 1 <= k <= n samples per prompt, got n = {rewards.shape[1]}")
    return rewards.float().mean(dim=1)
