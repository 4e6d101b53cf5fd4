"""Loss aggregation, policy losses (PPO-clip, CISPO, GSPO), truncated IS weights, value loss, entropy.

Every loss returns ``(loss, metrics)``: ``loss`` is the 0-dim tensor to minimise; ``metrics`` maps a bare name
("clip_frac", ...) to a detached 0-dim tensor (the driver adds the "<group>/" prefix when it logs).
Policy losses share one keyword interface so ``POLICY_LOSS_FNS[name](logp, logp_old, adv, mask, **kw)`` works for
every name; ``adv`` is token-level ``[B, T]`` (broadcast sequence advantages with ``adv[:, None] * mask``).
Entries where ``mask == 0`` never influence the loss or its gradient, even if they hold inf/nan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from rlplat.algos._common import (
    LOG_RATIO_CLAMP,
    check_group_ids,
    check_ndim,
    check_same_shape,
    clipped_surrogate,
    group_index,
    group_sum,
    masked_mean,
)
from rlplat.algos.kl import kl_estimate

# ---------------------------------------------------------------------------------------------- aggregation


def _token_mean(v: Tensor, mask: Tensor, norm_len: int, group_ids: Tensor | None, count: float | None) -> Tensor:
    return v.sum() / (count if count is not None else mask.sum().clamp(min=1))


def _num_nonempty_seqs(mask: Tensor) -> Tensor:
    return (mask.sum(-1) > 0).sum().clamp(min=1)


def _seq_mean_token_mean(
    v: Tensor, mask: Tensor, norm_len: int, group_ids: Tensor | None, count: float | None
) -> Tensor:
    per_seq = v.sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / (count if count is not None else _num_nonempty_seqs(mask))


def _seq_mean_token_sum(
    v: Tensor, mask: Tensor, norm_len: int, group_ids: Tensor | None, count: float | None
) -> Tensor:
    return v.sum() / (count if count is not None else _num_nonempty_seqs(mask))


def _seq_mean_token_sum_norm(
    v: Tensor, mask: Tensor, norm_len: int, group_ids: Tensor | None, count: float | None
) -> Tensor:
    num_seqs = count if count is not None else v.shape[0]
    return v.sum() / (num_seqs * norm_len)


def _prompt_level(v: Tensor, mask: Tensor, norm_len: int, group_ids: Tensor | None, count: float | None) -> Tensor:
    if group_ids is None:
        raise ValueError("agg mode 'prompt-level' needs group_ids ([B] int64, one id per prompt)")
    check_group_ids(group_ids, v.shape[0])
    inv, num_groups = group_index(group_ids)
    tokens_per_prompt = group_sum(mask.sum(-1), inv, num_groups)
    per_prompt = group_sum(v.sum(-1), inv, num_groups) / tokens_per_prompt.clamp(min=1)
    num_prompts = (tokens_per_prompt > 0).sum().clamp(min=1)
    return per_prompt.sum() / (count if count is not None else num_prompts)


_AGG_IMPLS: dict[str, Callable[[Tensor, Tensor, int, Tensor | None, float | None], Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
    "prompt-level": _prompt_level,
}

AGG_MODES: tuple[str, ...] = tuple(_AGG_IMPLS)


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str,
    *,
    norm_len: int | None = None,
    group_ids: Tensor | None = None,
    global_count: float | None = None,
) -> Tensor:
    """Reduce a per-token loss matrix to a scalar  [verl agg_loss; DAPO arXiv:2503.14476; Dr.GRPO arXiv:2503.20783;
    ScaleRL arXiv:2510.13786].

    With v_bt = values_bt * mask_bt, L_b = sum_t mask_bt (tokens of sequence b):
      "token-mean":              sum_bt v_bt / sum_bt mask_bt                               (DAPO, verl default)
      "seq-mean-token-mean":     (1/S) sum_b [ sum_t v_bt / L_b ]                           (original GRPO)
      "seq-mean-token-sum":      (1/S) sum_b sum_t v_bt
      "seq-mean-token-sum-norm": sum_bt v_bt / (B * norm_len)                               (Dr.GRPO, constant norm)
      "prompt-level":            (1/P) sum_p [ sum_{b in p} sum_t v_bt / sum_{b in p} L_b ] (ScaleRL)
    S = number of sequences with at least one unmasked token, P = number of prompts (distinct group_ids) with at
    least one unmasked token: a sequence/prompt whose mask is all zero (e.g. dropped by the zero-variance filter)
    leaves the average, it is not counted as a zero. B = values.shape[0] and norm_len (default T) are constants.
    Empty denominators are clamped to 1, so an all-masked batch gives 0, not nan.

    global_count overrides the outer count (tokens for token-mean, S for seq-mean-*, B for
    seq-mean-token-sum-norm, P for prompt-level). Pass the count over the whole global batch when a batch is split
    into micro-batches, so that the micro-batch losses add up to the global-batch loss.

    values: [B, T] float32 per-token loss. mask: [B, T] float32 0/1. group_ids: [B] int64, required for
    "prompt-level" (ignored otherwise). Returns a 0-dim float32 tensor; differentiable w.r.t. values.
    Raises ValueError for an unknown mode, mismatched shapes, or non-positive norm_len/global_count.
    """
    if mode not in _AGG_IMPLS:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")
    check_ndim("values", values, 2)
    check_same_shape(values=values, mask=mask)
    if norm_len is not None and norm_len <= 0:
        raise ValueError(f"norm_len must be > 0, got {norm_len}")
    if global_count is not None and global_count <= 0:
        raise ValueError(f"global_count must be > 0, got {global_count}")
    valid = mask > 0
    v = torch.where(valid, values * mask, torch.zeros_like(values))
    m = torch.where(valid, mask, torch.zeros_like(mask)).to(values.dtype)
    return _AGG_IMPLS[mode](v, m, norm_len if norm_len is not None else values.shape[1], group_ids, global_count)


def aggregate_count(mode: str, masks: Sequence[Tensor]) -> float:
    """The ``global_count`` to pass to ``aggregate`` for each micro-batch of a batch split into ``masks``, so that the
    micro-batch losses add up to the loss of the whole batch (the outer denominator of ``mode``, over every part):

      "token-mean":              max(1, sum_bt mask_bt)                 (tokens)
      "seq-mean-token-mean",
      "seq-mean-token-sum":      max(1, S), S = sequences with at least one unmasked token
      "seq-mean-token-sum-norm": sum of the parts' B                    (every sequence, empty or not)

    masks: one [B_i, T_i] float32 0/1 tensor per micro-batch. Returns a float (a host sync per part).
    Raises ValueError for "prompt-level", whose count needs the prompts of every part, or an unknown mode.
    """
    if mode == "token-mean":
        return max(1.0, float(sum(m.sum() for m in masks)))
    if mode == "seq-mean-token-sum-norm":
        return float(sum(m.shape[0] for m in masks))
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        return max(1.0, float(sum((m.sum(1) > 0).sum() for m in masks)))
    raise ValueError(f"no micro-batch count for aggregation mode {mode!r} (prompt-level would need every part's "
                     "prompts); expected token-mean or a seq-mean-* mode")


# ---------------------------------------------------------------------------------------------- policy losses


def clean_policy_inputs(
    logp: Tensor, logp_old: Tensor, adv: Tensor, mask: Tensor, is_weights: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The input checks and cleaning every policy loss starts with: shapes checked, masked entries zeroed (so
    inf/nan padding cannot leak into gradients), logp_old and adv detached.

    logp, logp_old, adv, mask: [B, T] float32; is_weights: [B, T] float32 or None (shape-checked only).
    Returns (logp, logp_old, adv), each [B, T] float32 with 0.0 where mask == 0; only logp keeps its gradient.
    Raises ValueError when logp is not 2-D or the shapes differ.
    """
    check_ndim("logp", logp, 2)
    check_same_shape(logp=logp, logp_old=logp_old, adv=adv, mask=mask)
    if is_weights is not None:
        check_same_shape(logp=logp, is_weights=is_weights)
    valid = mask > 0
    zero = torch.zeros_like(logp)
    return (
        torch.where(valid, logp, zero),
        torch.where(valid, logp_old.detach(), zero),
        torch.where(valid, adv.detach(), zero),
    )


def check_clip_range(clip_low: float | None, clip_high: float) -> None:
    """Raise ValueError for a negative clip range (clip_low None = no lower bound, as CISPO allows)."""
    if clip_low is not None and clip_low < 0:
        raise ValueError(f"clip_low must be >= 0, got {clip_low}")
    if clip_high < 0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")


def ratio_metrics(logp: Tensor, logp_old: Tensor, ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The metrics every policy loss reports about its importance ratio, as detached masked means:

      approx_kl  = mean_t k3(old || new) = mean_t (exp(logp_old_t - logp_t) - 1 - (logp_old_t - logp_t))
      ratio_mean = mean_t ratio_t

    logp: [B, T] float32 current policy. logp_old: [B, T] float32 the policy the KL is measured from (the ratio's
    denominator, or pi_k for Mix-PPG). ratio: [B, T] float32. mask: [B, T] float32 0/1. Returns 0-dim tensors.
    """
    with torch.no_grad():
        return {
            "approx_kl": masked_mean(kl_estimate(logp_old, logp, "k3"), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }


def apply_is_weights(tok_loss: Tensor, is_weights: Tensor | None) -> Tensor:
    """w_t * l_t with detached importance weights (e.g. `truncated_is_weights`); tok_loss unchanged for None.

    tok_loss: [B, T] float32. is_weights: [B, T] float32 or None. Returns [B, T] float32.
    """
    return tok_loss if is_weights is None else tok_loss * is_weights.detach()


def ppo_clip_loss(
    logp: Tensor,
    logp_old: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    is_weights: Tensor | None = None,
    norm_len: int | None = None,
    group_ids: Tensor | None = None,
    global_count: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate  [Schulman et al., arXiv:1707.06347], asymmetric bounds = DAPO clip-higher
    [arXiv:2503.14476], dual clip [Ye et al., arXiv:1912.09729], as verl's "vanilla" policy loss.

      r_t = exp(clamp(logp_t - logp_old_t, -20, 20))
      l_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high))
      dual clip (only where A_t < 0):  l_t = min(l_t, -A_t * dual_clip)
      loss = aggregate(w_t * l_t, mask, agg)      with w = is_weights (e.g. truncated_is_weights), else 1.

    logp: [B, T] float32 current-policy log-probs (the only input that gets gradient).
    logp_old: [B, T] float32 log-probs of the policy that produced the data (detached).
    adv: [B, T] float32 advantages (detached). mask: [B, T] float32 0/1. is_weights: [B, T] float32 or None
    (detached). norm_len / group_ids / global_count are passed to ``aggregate``.
    dual_clip: the ratio bound c (> 1, verl clip_ratio_c = 3.0) or None for no dual clip.
    Returns (loss 0-dim, metrics): "clip_frac" (share of unmasked tokens whose clipped term is active, i.e. that get
    zero gradient), "clip_frac_lower" (share where the dual clip is active), "approx_kl" (mean k3 estimate of
    KL(old || new)), "ratio_mean". Raises ValueError for bad shapes, negative clip ranges, dual_clip <= 1.
    """
    check_clip_range(clip_low, clip_high)
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    logp, logp_old, adv = clean_policy_inputs(logp, logp_old, adv, mask, is_weights)
    ratio = torch.exp(torch.clamp(logp - logp_old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    tok_loss, clipped = clipped_surrogate(ratio, adv, 1.0 - clip_low, 1.0 + clip_high)
    dual_active = torch.zeros_like(clipped)
    if dual_clip is not None:
        negative = adv < 0
        dual_bound = -adv * dual_clip
        dual_active = negative & (tok_loss > dual_bound)
        tok_loss = torch.where(negative, torch.minimum(tok_loss, dual_bound), tok_loss)
    loss = aggregate(apply_is_weights(tok_loss, is_weights), mask, agg, norm_len=norm_len, group_ids=group_ids,
                     global_count=global_count)
    metrics = ratio_metrics(logp, logp_old, ratio, mask)
    metrics["clip_frac"] = masked_mean(clipped.to(logp.dtype), mask)
    metrics["clip_frac_lower"] = masked_mean(dual_active.to(logp.dtype), mask)
    return loss, metrics


def cispo_loss(
    logp: Tensor,
    logp_old: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    clip_low: float | None = None,
    clip_high: float = 4.0,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    is_weights: Tensor | None = None,
    norm_len: int | None = None,
    group_ids: Tensor | None = None,
    global_count: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO: REINFORCE with a clipped, stop-gradient IS weight  [MiniMax-M1, arXiv:2506.13585; ScaleRL
    arXiv:2510.13786; verl loss_mode=cispo].

      r_t = exp(clamp(logp_t - logp_old_t, -20, 20))
      l_t = -sg(clip(r_t, 1 - clip_low, 1 + clip_high)) * A_t * logp_t        (no lower bound if clip_low is None)
      loss = aggregate(w_t * l_t, mask, agg)
    Every token keeps a gradient (-w A grad logp); only the weight is truncated. ScaleRL's min(r, eps_max) is
    clip_low=None, clip_high=eps_max - 1; the default clip_high=4.0 is a cap of 5 on the weight (TRL's ScaleRL
    example, epsilon_high=5). The loss value itself is not meaningful, only its gradient.

    logp: [B, T] float32 (gets gradient). logp_old: [B, T] float32 generator/old log-probs (detached).
    adv: [B, T] float32 (detached). mask: [B, T] float32 0/1. is_weights: [B, T] float32 or None.
    dual_clip must be None (accepted only so all POLICY_LOSS_FNS share one keyword interface).
    Returns (loss 0-dim, metrics): "clip_frac" (share of unmasked tokens whose weight was truncated),
    "approx_kl", "ratio_mean". Raises ValueError for bad shapes, negative clip ranges or a dual_clip value.
    """
    check_clip_range(clip_low, clip_high)
    if dual_clip is not None:
        raise ValueError("dual_clip is only defined for the 'ppo' loss")
    logp, logp_old, adv = clean_policy_inputs(logp, logp_old, adv, mask, is_weights)
    ratio = torch.exp(torch.clamp(logp - logp_old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()
    lower = None if clip_low is None else 1.0 - clip_low
    weight = torch.clamp(ratio, min=lower, max=1.0 + clip_high)
    tok_loss = -weight * adv * logp
    loss = aggregate(apply_is_weights(tok_loss, is_weights), mask, agg, norm_len=norm_len, group_ids=group_ids,
                     global_count=global_count)
    metrics = ratio_metrics(logp, logp_old, ratio, mask)
    metrics["clip_frac"] = masked_mean((weight != ratio).to(logp.dtype), mask)
    return loss, metrics


def gspo_loss(
    logp: Tensor,
    logp_old: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
    agg: str = "seq-mean-token-mean",
    is_weights: Tensor | None = None,
    norm_len: int | None = None,
    group_ids: Tensor | None = None,
    global_count: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: PPO clipping on the sequence-level geometric-mean ratio  [Zheng et al., arXiv:2507.18071].

      log s_b   = (1/L_b) sum_t mask_bt (logp_bt - logp_old_bt)                   (s_b = geometric-mean ratio)
      s_bt      = exp(min(sg(log s_b) + logp_bt - sg(logp_bt), 10))   (value s_b; grad s_b * grad logp_bt)
      l_bt      = max(-A_bt s_bt, -A_bt clip(s_bt, 1 - clip_low, 1 + clip_high))
      loss      = aggregate(w_bt * l_bt, mask, agg)
    With a sequence-constant A and agg="seq-mean-token-mean" (the default, as the paper and verl) the gradient is
    the paper's  -(1/B) sum_b A_b s_b (1/L_b) sum_t grad logp_bt  for unclipped sequences, 0 for clipped ones. The
    default clip range 3e-4 / 4e-4 is the paper's; the token-level form (GSPO-token) allows token-level A.

    logp: [B, T] float32 (gets gradient). logp_old: [B, T] float32 (detached). adv: [B, T] float32 (detached).
    mask: [B, T] float32 0/1. is_weights: [B, T] float32 or None. dual_clip must be None.
    Returns (loss 0-dim, metrics): "clip_frac" (share of unmasked tokens in clipped sequences), "approx_kl"
    (token-level), "ratio_mean" (token-level r), "seq_ratio_mean" (mean of s_b over non-empty sequences).
    Raises ValueError for bad shapes, negative clip ranges or a dual_clip value.
    """
    check_clip_range(clip_low, clip_high)
    if dual_clip is not None:
        raise ValueError("dual_clip is only defined for the 'ppo' loss")
    logp, logp_old, adv = clean_policy_inputs(logp, logp_old, adv, mask, is_weights)
    lengths = mask.sum(-1)
    log_seq_ratio = (logp - logp_old).sum(-1) / lengths.clamp(min=1)  # masked entries are already 0
    log_tok = logp - logp.detach() + log_seq_ratio.detach()[:, None]
    seq_ratio_tok = torch.exp(torch.clamp(log_tok, max=10.0))
    tok_loss, clipped = clipped_surrogate(seq_ratio_tok, adv, 1.0 - clip_low, 1.0 + clip_high)
    loss = aggregate(apply_is_weights(tok_loss, is_weights), mask, agg, norm_len=norm_len, group_ids=group_ids,
                     global_count=global_count)
    ratio = torch.exp(torch.clamp(logp - logp_old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    metrics = ratio_metrics(logp, logp_old, ratio, mask)
    metrics["clip_frac"] = masked_mean(clipped.to(logp.dtype), mask)
    nonempty = (lengths > 0).to(logp.dtype)
    metrics["seq_ratio_mean"] = (log_seq_ratio.detach().exp() * nonempty).sum() / nonempty.sum().clamp(min=1)
    return loss, metrics


def truncated_is_weights(
    logp_old: Tensor, logp_behaviour: Tensor, mask: Tensor, *, cap: float, floor: float = 0.0
) -> Tensor:
    """Truncated importance sampling (TIS) weights for the trainer/generator mismatch
    [Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", 2025,
    https://fengyao.notion.site/off-policy-rl].

      w_t = clamp(exp(logp_old_t - logp_behaviour_t), floor, cap)   where mask_t = 1,   w_t = 0 where mask_t = 0.
    The exponent is clamped to [-20, 20]. Pass the result as ``is_weights`` to a policy loss.

    logp_old: [B, T] float32 log-probs of the sampled tokens recomputed by the trainer under the old policy.
    logp_behaviour: [B, T] float32 log-probs reported by the generator (e.g. vLLM) for the same tokens.
    mask: [B, T] float32 0/1. Returns: [B, T] float32, detached.
    Raises ValueError for mismatched shapes, cap <= 0 or floor > cap.
    """
    check_same_shape(logp_old=logp_old, logp_behaviour=logp_behaviour, mask=mask)
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    if floor > cap:
        raise ValueError(f"floor ({floor}) must be <= cap ({cap})")
    with torch.no_grad():
        log_w = torch.clamp(logp_old - logp_behaviour, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        w = torch.clamp(torch.exp(log_w), floor, cap)
        return torch.where(mask > 0, w, torch.zeros_like(w))


# ---------------------------------------------------------------------------------------------- value, entropy


def value_loss(
    values: Tensor,
    values_old: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None,
    agg: str = "token-mean",
    norm_len: int | None = None,
    group_ids: Tensor | None = None,
    global_count: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss as in PPO/verl  [arXiv:1707.06347; Engstrom et al., arXiv:2005.12729].

      V^clip_t = V_old_t + clamp(V_t - V_old_t, -clip, clip)
      l_t = 0.5 * max((V_t - R_t)^2, (V^clip_t - R_t)^2)         (0.5 * (V_t - R_t)^2 when clip is None)
      loss = aggregate(l, mask, agg)

    values: [B, T] float32 current critic outputs (get gradient). values_old: [B, T] float32 critic outputs at
    rollout time (detached). returns: [B, T] float32 targets, e.g. ``gae(...)[1]`` (detached). mask: [B, T] 0/1.
    Returns (loss 0-dim, metrics): "clip_frac" (share of unmasked tokens where the clipped term is larger),
    "value_mean". Raises ValueError for mismatched shapes or a negative clip.
    """
    check_ndim("values", values, 2)
    check_same_shape(values=values, values_old=values_old, returns=returns, mask=mask)
    if clip is not None and clip < 0:
        raise ValueError(f"clip must be >= 0, got {clip}")
    valid = mask > 0
    zero = torch.zeros_like(values)
    v = torch.where(valid, values, zero)
    v_old = torch.where(valid, values_old.detach(), zero)
    ret = torch.where(valid, returns.detach(), zero)
    loss_unclipped = (v - ret) ** 2
    if clip is None:
        tok_loss, clipped = loss_unclipped, torch.zeros_like(valid)
    else:
        v_clipped = v_old + torch.clamp(v - v_old, -clip, clip)
        loss_clipped = (v_clipped - ret) ** 2
        tok_loss, clipped = torch.maximum(loss_unclipped, loss_clipped), loss_clipped > loss_unclipped
    loss = 0.5 * aggregate(tok_loss, mask, agg, norm_len=norm_len, group_ids=group_ids, global_count=global_count)
    with torch.no_grad():
        metrics = {"clip_frac": masked_mean(clipped.to(v.dtype), mask), "value_mean": masked_mean(v, mask)}
    return loss, metrics


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Categorical entropy per position  H = logsumexp(z) - sum_v softmax(z)_v z_v = -sum_v p_v log p_v.

    Computed in float32 (logits are upcast; ScaleRL arXiv:2510.13786 on fp32 logits); -inf logits are allowed
    (p = 0 contributes 0, with a finite gradient).
    logits: [B, T, V] float (any leading dims). Returns: [B, T] float32, differentiable.
    """
    if logits.dim() < 1:
        raise ValueError("logits must have a vocabulary dimension")
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = torch.exp(logp)
    safe_logp = torch.where(p > 0, logp, torch.zeros_like(logp))
    return -(p * safe_logp).sum(-1)


def logp_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of the given tokens  log p(y_t) = z_{t, y_t} - logsumexp_v z_{t, v}, in float32.

    logits: [B, T, V] float (any leading dims; position t predicts tokens[..., t]). tokens: [B, T] int64.
    Returns: [B, T] float32, differentiable w.r.t. logits. Raises ValueError for mismatched leading shapes.
    """
    if logits.dim() < 1 or logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be tokens {tuple(tokens.shape)} + [V]")
    z = logits.float()
    picked = torch.gather(z, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


PolicyLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]

POLICY_LOSS_FNS: dict[str, PolicyLossFn] = {
    "ppo": ppo_clip_loss,
    "cispo": cispo_loss,
    "gspo": gspo_loss,
}
