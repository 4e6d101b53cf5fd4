"""Private helpers shared by the rlplat.algos modules (shape checks, masked reductions, group indexing).

Not part of the public API; signatures may change without notice.
"""

from __future__ import annotations

import torch
from torch import Tensor

# exp() argument bound used for importance ratios, as in verl (keeps exp finite in float32).
LOG_RATIO_CLAMP = 20.0


def check_ndim(name: str, t: Tensor, ndim: int) -> None:
    """Raise ValueError unless ``t`` has exactly ``ndim`` dimensions."""
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ValueError unless all named tensors share one shape."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.shape != first.shape:
            raise ValueError(f"shape mismatch: {first_name} {tuple(first.shape)} vs {name} {tuple(t.shape)}")


def check_group_ids(group_ids: Tensor, n: int) -> None:
    """group_ids: [N] integer tensor with N == n, else ValueError."""
    check_ndim("group_ids", group_ids, 1)
    if group_ids.shape[0] != n:
        raise ValueError(f"group_ids has {group_ids.shape[0]} entries, expected {n}")
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")


def as_float_rewards(rewards: Tensor) -> Tensor:
    """rewards: [N] any real dtype -> [N] detached floating tensor (integer/bool cast to float32)."""
    check_ndim("rewards", rewards, 1)
    if not rewards.dtype.is_floating_point:
        rewards = rewards.to(torch.float32)
    return rewards.detach()


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary ids to dense group indices.

    group_ids: [N] int64. Returns (inv [N] int64 in [0, G), G) where samples sharing an id share inv.
    """
    if group_ids.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=group_ids.device), 0
    # sort, number the runs of equal ids, scatter back (torch.unique(return_inverse=True) without its typing gaps)
    sorted_ids, order = torch.sort(group_ids)
    starts = torch.ones_like(sorted_ids, dtype=torch.int64)
    starts[1:] = (sorted_ids[1:] != sorted_ids[:-1]).to(torch.int64)
    dense = torch.cumsum(starts, 0) - 1
    inv = torch.empty_like(dense).scatter_(0, order, dense)
    return inv, int(dense[-1].item()) + 1


def group_sum(x: Tensor, inv: Tensor, num_groups: int) -> Tensor:
    """Per-group sum: x [N] (any float dtype), inv [N] int64 -> [G] with x's dtype."""
    return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add(0, inv, x)


def group_mean_std(x: Tensor, inv: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group count, mean and unbiased std (torch.std default, Bessel-corrected).

    x: [N] float, inv: [N] int64. Returns (count [G], mean [G], std [G]) in x's dtype; std is 0 for groups of
    size 1 (callers decide what a singleton means).
    """
    count = group_sum(torch.ones_like(x), inv, num_groups)
    mean = group_sum(x, inv, num_groups) / count
    sq = group_sum((x - mean[inv]) ** 2, inv, num_groups)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return count, mean, std


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of x where mask > 0 (0-dim). Masked entries are dropped with where(), so inf/nan there is harmless."""
    return torch.where(mask > 0, x * mask, torch.zeros_like(x)).sum()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over entries with mask > 0 (0-dim); 0 when the mask is empty."""
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


def weighted_whiten(x: Tensor, weight: Tensor, *, shift_mean: bool, eps: float) -> Tensor:
    """(x - mu) / sqrt(var + eps) with weighted mean/unbiased variance, as verl's masked_whiten.

    mu = sum(w x) / sum(w);  var = sum(w (x - mu)^2) / (sum(w) - 1)   (Bessel correction on the weight total).
    x, weight: same shape, float. With shift_mean=False mu is added back. Raises ValueError if sum(w) <= 1.
    """
    total = weight.sum()
    if total.item() <= 1:
        raise ValueError(f"whitening needs more than one unmasked element, got weight total {total.item()}")
    mu = masked_sum(x, weight) / total
    centred = x - mu
    var = masked_sum(centred**2, weight) / (total - 1)
    out = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mu
    return out


def clipped_surrogate(
    ratio: Tensor, adv: Tensor, lower: Tensor | float, upper: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Per-token PPO surrogate loss max(-A r, -A clip(r, lower, upper)) and where the clipped branch is active.

    ratio, adv: [B, T] float; lower/upper: scalars or [B, T]. Returns (loss [B, T], clipped [B, T] bool) where
    clipped marks tokens whose clipped term is strictly larger, i.e. tokens that get zero gradient.
    """
    if isinstance(lower, Tensor) or isinstance(upper, Tensor):
        lo = torch.as_tensor(lower, dtype=ratio.dtype, device=ratio.device)
        hi = torch.as_tensor(upper, dtype=ratio.dtype, device=ratio.device)
        ratio_clipped = torch.minimum(torch.maximum(ratio, lo), hi)
    else:
        ratio_clipped = torch.clamp(ratio, lower, upper)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio_clipped
    return torch.maximum(loss_unclipped, loss_clipped), loss_clipped > loss_unclipped
