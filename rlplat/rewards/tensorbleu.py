"""Token-id BLEU on torch tensors ("TensorBLEU"): per sentence and per corpus, batched, on any device.

BLEU [Papineni et al. 2002, https://aclanthology.org/P02-1040] of a candidate c against references R:

    p_n  = sum_g min(count_c(g), max_{r in R} count_r(g)) / max(1, #n-grams of c)      (g = n-gram, n = 1..N)
    BP   = 1 if |c| > r*,  0 if |c| = 0,  exp(1 - r*/|c|) otherwise
    BLEU = BP * exp(sum_n w_n log p_n)

where r* is the reference length closest to |c| (ties go to the shorter one). Corpus BLEU sums the clipped
numerators, the denominators, |c| and r* over the batch before dividing. The TensorBLEU paper
[Reactive AI, arXiv:2510.05485, https://arxiv.org/abs/2510.05485] computes this on token ids on the GPU for use as a
dense RL reward; this is our own implementation of that idea. It is for relative/internal use (rewards,
monitoring); report final scores with SacreBLEU on detokenised text.

Parity: values equal NLTK's `nltk.translate.bleu_score.sentence_bleu` / `corpus_bleu` (same weights, smoothing
`SmoothingFunction().method0..3` with NLTK's default epsilon=0.1 and add-one for method2) on the unpadded
token-id lists, within 1e-6 (in practice ~1e-15; results are float64). That includes NLTK's quirks:
- BLEU is 0 whenever the unigram numerator is 0 (before any smoothing), so an empty candidate scores 0;
- denominators are max(1, #n-grams) per sentence, also when summed for corpus BLEU;
- "none" (method0) puts sys.float_info.min in place of a zero precision, so the score is tiny (~1e-77 for
  BLEU-4) rather than exactly 0, unless that order's weight is 0. NLTK also emits a UserWarning then; we do
  not, because finding out would need a device-to-host sync;
- "add-k" (method2) leaves the unigram precision unsmoothed; "exp" (method3) counts zero orders 1, 2, ...
  across all orders, including orders whose weight is 0;
- smoothing for corpus BLEU is applied to the summed counts.

Padding: every row is read up to its first `pad_id` (padding is expected only at the end; anything after the
first pad is ignored). A reference slot that is all padding means "no reference", so samples may have
different numbers of references. A sample with no reference at all is scored like NLTK with references=[[]]
(one empty reference): sentence BLEU 0, and it adds r* = 0 in corpus BLEU.

Counting, fully batched and free of host syncs (an RL step can call it without waiting for the GPU):
all token positions of the candidates and references are laid out as one flat stream of P = B*Lc + B*R*Lr
positions. A dense rank of the raw token ids (sort + cumsum; like torch.unique but with a static shape) gives
collision-free ids in [0, P). The order-1 key is (sentence, token); an order-n key is `g_{n-1} * P + tok`,
the group id of the (n-1)-gram prefix and the id of the last token, exact in int64 for P < 2^31. One dense
rank per order turns those keys into group ids, one group per (sentence, n-gram). A single index_add over
all orders counts, per group, the candidate's occurrences and each reference slot's; min(cand, max over
slots) summed per sentence is the clipped numerator. In all: max_n + 1 sorts of P int64 keys, a few
scatters, no Python loop over sentences and no data-dependent shapes. Measured at B=512, L=1024, one
reference: ~3.5 ms on one H100 (see BENCHMARKS.md, `rlplat bench tensorbleu`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

_NLTK_EPSILON = 0.1  # SmoothingFunction().epsilon, used by method1 ("floor")
_NLTK_ADD = 1.0  # method2 ("add-k") adds 1 to numerator and denominator of orders n >= 2
_DBL_MIN = sys.float_info.min  # what NLTK's method0 puts in place of a zero precision
_I64_MAX = torch.iinfo(torch.int64).max
_MAX_POSITIONS = 2**31  # keeps g * P + tok below 2^62, so the n-gram keys cannot collide


class _Counts(NamedTuple):
    num: Tensor  # [B, N] int64, clipped n-gram matches per order
    den: Tensor  # [B, N] int64, max(1, #candidate n-grams) per order
    hyp_len: Tensor  # [B] int64, candidate length
    ref_len: Tensor  # [B] int64, closest reference length (shorter one on ties; 0 if no reference)


def sentence_bleu(
    candidates: Tensor,
    references: Tensor,
    *,
    pad_id: int,
    max_n: int = 4,
    weights: Sequence[float] | None = None,
    smoothing: str = "none",
) -> Tensor:
    """BLEU of each candidate against its own references, equal to NLTK's `sentence_bleu` per row.

    candidates: [B, Lc] integer (int64 preferred), right-padded with pad_id.
    references: [B, R, Lr] integer, right-padded with pad_id; an all-pad slot means "no reference".
    weights: max_n non-negative floats summing to 1 (default uniform 1/max_n), w_n for order n = 1..max_n.
    smoothing: "none" | "floor" | "add-k" | "exp" = NLTK SmoothingFunction().method0 | method1 | method2 | method3.
    Returns [B] float64 on the candidates' device, BLEU in [0, 1]. No host sync happens.

    >>> cand = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 9, 9, 0]])
    >>> refs = torch.tensor([[[5, 6, 7, 8], [0, 0, 0, 0]], [[5, 6, 7, 9], [6, 9, 0, 0]]])
    >>> sentence_bleu(cand, refs, pad_id=0, max_n=2)
    tensor([1.0000, 0.7071], dtype=torch.float64)
    """
    w = _check_inputs(candidates, references, pad_id=pad_id, max_n=max_n, weights=weights, smoothing=smoothing)
    counts = _ngram_counts(candidates, references, pad_id=pad_id, max_n=max_n)
    return _bleu_from_counts(counts, w, smoothing)


def corpus_bleu(
    candidates: Tensor,
    references: Tensor,
    *,
    pad_id: int,
    max_n: int = 4,
    weights: Sequence[float] | None = None,
    smoothing: str = "none",
) -> Tensor:
    """Corpus BLEU of the whole batch, equal to NLTK's `corpus_bleu` (micro-averaged counts and lengths).

    Same arguments as `sentence_bleu`. Numerators, denominators, candidate lengths and closest reference
    lengths are summed over the batch, then smoothed and combined once. Returns a 0-dim float64 tensor
    (0 for an empty batch, as NLTK).

    >>> cand = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 9, 9, 0]])
    >>> refs = torch.tensor([[[5, 6, 7, 8], [0, 0, 0, 0]], [[5, 6, 7, 9], [6, 9, 0, 0]]])
    >>> corpus_bleu(cand, refs, pad_id=0, max_n=2)
    tensor(0.8539, dtype=torch.float64)
    """
    w = _check_inputs(candidates, references, pad_id=pad_id, max_n=max_n, weights=weights, smoothing=smoothing)
    c = _ngram_counts(candidates, references, pad_id=pad_id, max_n=max_n)
    total = _Counts(num=c.num.sum(0), den=c.den.sum(0), hyp_len=c.hyp_len.sum(0), ref_len=c.ref_len.sum(0))
    return _bleu_from_counts(total, w, smoothing)


def _check_inputs(
    candidates: Tensor,
    references: Tensor,
    *,
    pad_id: int,
    max_n: int,
    weights: Sequence[float] | None,
    smoothing: str,
) -> list[float]:
    """Raise ValueError for bad arguments (metadata only, no sync); return the resolved weights."""
    tensors = (("candidates", candidates, 2, "[B, Lc]"), ("references", references, 3, "[B, R, Lr]"))
    for name, t, rank, shape in tensors:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor {shape}, got {type(t).__name__}")
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise ValueError(f"{name} must hold integer token ids, got dtype {t.dtype}")
        if t.dim() != rank:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if candidates.shape[0] != references.shape[0]:
        raise ValueError(
            f"batch sizes differ: candidates {tuple(candidates.shape)} vs references {tuple(references.shape)}"
        )
    if candidates.device != references.device:
        raise ValueError(f"candidates on {candidates.device} but references on {references.device}")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int):
        raise ValueError(f"pad_id must be an int, got {pad_id!r}")
    if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"max_n must be an int >= 1, got {max_n!r}")
    if smoothing not in SMOOTHING_FNS:
        raise ValueError(f"unknown smoothing {smoothing!r}; expected one of {sorted(SMOOTHING_FNS)}")
    num_positions = candidates.numel() + references.numel()
    if num_positions >= _MAX_POSITIONS:
        raise ValueError(f"too many token positions ({num_positions}); split the batch below 2^31 positions")
    return _resolve_weights(weights, max_n)


def _resolve_weights(weights: Sequence[float] | None, max_n: int) -> list[float]:
    if weights is None:
        return [1.0 / max_n] * max_n
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError) as e:
        raise ValueError(f"weights must be a sequence of {max_n} floats, got {weights!r}") from e
    if len(w) != max_n:
        raise ValueError(f"weights has {len(w)} entries but max_n={max_n}; give one weight per n-gram order")
    if not all(math.isfinite(x) and x >= 0.0 for x in w):
        raise ValueError(f"weights must be finite and >= 0, got {w}")
    if abs(math.fsum(w) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1 (geometric mean of the precisions), got sum {math.fsum(w)!r}")
    return w


def _ngram_counts(candidates: Tensor, references: Tensor, *, pad_id: int, max_n: int) -> _Counts:
    """Clipped n-gram matches, denominators and lengths per sentence (see the module docstring)."""
    b, _ = candidates.shape
    _, r, lr = references.shape
    dev = candidates.device
    cand, refs = candidates.long(), references.long()
    if r == 0:  # no slots at all: same as one all-pad slot
        refs, r = refs.new_full((b, 1, lr), pad_id), 1
    hyp_len, slot_len = _row_lengths(cand, pad_id), _row_lengths(refs, pad_id)  # [B], [B, R]
    tokens, left, sent, src = _flat_positions(cand, refs, hyp_len, slot_len)
    p = tokens.numel()

    # Group ids per order n: one id per (sentence, n-gram), [max_n, P] int64, distinct across orders.
    tok = _dense_rank(tokens)  # collision-free token ids in [0, P)
    dead = -1 - src.clamp(max=1)  # no n-gram starts here: -1 in candidates, -2 in references (never match)
    key = torch.add(tok, sent, alpha=p)  # order 1: (sentence, token)
    groups = []
    for n in range(1, max_n + 1):
        groups.append(_dense_rank(torch.where(left >= n, key, dead)))
        if n < max_n:  # extend each n-gram by the token after it (wrapped entries are dead next round)
            key = torch.add(torch.roll(tok, -n), groups[-1], alpha=p)
    order = torch.arange(max_n, device=dev)[:, None]
    group = torch.add(torch.stack(groups), order, alpha=p)

    # One count for all orders: per group, occurrences in the candidate (column 0) and in each reference slot.
    counts = torch.zeros(max_n * p * (r + 1), dtype=torch.long, device=dev)
    ones = torch.ones(max_n * p, dtype=torch.long, device=dev)
    counts = counts.index_add_(0, torch.add(src, group, alpha=r + 1).view(-1), ones).view(max_n * p, r + 1)
    clipped = torch.minimum(counts[:, 0], counts[:, 1:].amax(1))  # [max_n * P]; 0 for dead and unused ids
    group_row = torch.zeros(max_n * p, dtype=torch.long, device=dev)  # order * B + sentence of each group
    group_row = group_row.scatter_(0, group.view(-1), torch.add(sent, order, alpha=b).view(-1))
    num = torch.zeros(max_n * b, dtype=torch.long, device=dev).index_add_(0, group_row, clipped)
    den = (hyp_len[:, None] - order.view(1, -1)).clamp(min=1)  # max(1, |c| - n + 1)
    ref_len = _closest_ref_len(hyp_len, slot_len, lr)
    return _Counts(num=num.view(max_n, b).T, den=den, hyp_len=hyp_len, ref_len=ref_len)


def _flat_positions(cand: Tensor, refs: Tensor, hyp_len: Tensor, slot_len: Tensor) -> tuple[Tensor, ...]:
    """Lay all candidate rows, then all reference rows, end to end. Each output is [P] int64, P = B*Lc + B*R*Lr:
    tokens; tokens left in the own row from this position on (<= 0 on padding); sentence index;
    source (0 = candidate, j + 1 = reference slot j)."""
    (b, lc), (_, r, lr), dev = cand.shape, refs.shape, cand.device
    tokens = torch.cat([cand.view(-1), refs.view(-1)])
    left_c = hyp_len[:, None] - torch.arange(lc, device=dev)
    left_r = slot_len[:, :, None] - torch.arange(lr, device=dev)
    left = torch.cat([left_c.view(-1), left_r.view(-1)])
    sent = torch.arange(b, device=dev)
    sent = torch.cat([sent[:, None].expand(b, lc).reshape(-1), sent[:, None, None].expand(b, r, lr).reshape(-1)])
    src = torch.arange(r + 1, device=dev)
    src = torch.cat([src[:1].expand(b * lc), src[None, 1:, None].expand(b, r, lr).reshape(-1)])
    return tokens, left, sent, src


def _row_lengths(x: Tensor, pad_id: int) -> Tensor:
    """Number of tokens before the first pad_id in each row of x [..., L] -> [...] int64."""
    return ((x == pad_id).cumsum(-1) == 0).sum(-1)


def _dense_rank(x: Tensor) -> Tensor:
    """Dense rank of each element of x [P] int64 among the distinct values (0 = smallest); [P] int64.

    Like torch.unique(return_inverse=True)[1], but with a static output shape, hence no host sync on CUDA.
    """
    sorted_x, order = torch.sort(x)
    rank_sorted = torch.cat([x.new_zeros(1), (sorted_x[1:] != sorted_x[:-1]).cumsum(0)])[: x.numel()]
    return torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)


def _closest_ref_len(hyp_len: Tensor, slot_len: Tensor, max_ref_len: int) -> Tensor:
    """Reference length closest to hyp_len [B], shorter on ties, over non-empty slots of slot_len [B, R]; 0 if none."""
    scale = max_ref_len + 1  # > any reference length, so (distance, length) orders lexicographically
    score = (slot_len - hyp_len[:, None]).abs() * scale + slot_len
    best = torch.where(slot_len > 0, score, _I64_MAX).amin(-1)
    return torch.where(best == _I64_MAX, 0, best % scale)


def _bleu_from_counts(c: _Counts, weights: list[float], smoothing: str) -> Tensor:
    """BLEU from counts with leading dims [...]: num, den [..., N] int64; hyp_len, ref_len [...] int64 -> [...] f64."""
    num, den = c.num.double(), c.den.double()
    log_p = SMOOTHING_FNS[smoothing](num, den).log()
    log_avg = sum((w * log_p[..., i] for i, w in enumerate(weights)), torch.zeros_like(log_p[..., 0]))
    hyp, ref = c.hyp_len.double(), c.ref_len.double()
    bp = torch.where(c.hyp_len > c.ref_len, 1.0, torch.exp(1.0 - ref / hyp.clamp(min=1.0)))
    bleu = bp * torch.exp(log_avg)  # |c| = 0 implies a zero unigram numerator, handled next
    return torch.where(c.num[..., 0] == 0, 0.0, bleu)  # NLTK: no unigram match -> 0, whatever the smoothing


def _smooth_none(num: Tensor, den: Tensor) -> Tensor:
    """NLTK method0: p_n = num/den, a zero numerator becomes sys.float_info.min. [..., N] f64 -> [..., N] f64."""
    return torch.where(num > 0, num / den, _DBL_MIN)


def _smooth_floor(num: Tensor, den: Tensor) -> Tensor:
    """NLTK method1: a zero numerator becomes epsilon = 0.1, p_n = 0.1 / den."""
    return torch.where(num > 0, num / den, _NLTK_EPSILON / den)


def _smooth_add_k(num: Tensor, den: Tensor) -> Tensor:
    """NLTK method2 [Lin & Och 2004]: p_n = (num + 1) / (den + 1) for n >= 2; the unigram stays num/den."""
    return torch.cat([num[..., :1] / den[..., :1], (num[..., 1:] + _NLTK_ADD) / (den[..., 1:] + _NLTK_ADD)], -1)


def _smooth_exp(num: Tensor, den: Tensor) -> Tensor:
    """NLTK method3 (NIST geometric): the k-th order with a zero numerator gets p_n = 1 / (2^k * den)."""
    zero = num == 0
    k = zero.cumsum(-1).to(num.dtype)
    return torch.where(zero, 1.0 / (torch.exp2(k) * den), num / den)


SMOOTHING_FNS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "none": _smooth_none,
    "floor": _smooth_floor,
    "add-k": _smooth_add_k,
    "exp": _smooth_exp,
}
