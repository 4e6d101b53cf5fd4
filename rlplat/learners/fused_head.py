"""Fused, chunked LM head: per-token log-probs (and entropy) of target tokens without materialising [N, V] logits.

    z_n = h_n W^T + b,   log p(y_n) = z_{n, y_n} - logsumexp_v z_{n, v},   H_n = -sum_v p_{n, v} log p_{n, v}

A Qwen2.5 vocabulary has 151,936 tokens: a 16k-token micro-batch's logits are 5 GiB in bf16 (10 GiB in fp32), and
the plain path (head -> log-softmax -> its backward -> entropy) passes over them several times. Here the tokens are
cut into chunks of `chunk_size`: the forward keeps only logsumexp per token, and the backward recomputes each chunk's
logits (one extra [chunk, H] x [H, V] matmul) to form  dL/dz = g * (onehot(y) - softmax(z)),  then dL/dh = dL/dz W
and dL/dW += dL/dz^T h (accumulated in fp32). Memory is O(chunk_size x V) instead of O(N x V); the result equals the
plain path up to float rounding (same casts: the matmul in `compute_dtype`, every reduction in fp32), as in Liger
Kernel's fused linear cross-entropy (arXiv:2410.10989), but returning per-token log-probs for a policy loss.
Pure torch: with `compile=True` the per-chunk elementwise work (upcast, logsumexp, target pick, entropy; softmax
gradient) is one torch.compile'd kernel per chunk in the forward and one in the backward, each a single pass over the
chunk's logits (two reads for logsumexp + entropy). `keep_logits` trades the backward's recomputed matmul for memory:
the chunk logits are kept from the forward. BENCHMARKS.md has the measured step times (H200: 0.555 s recomputing,
0.526 s keeping, for a Qwen2.5-0.5B-shaped step of 65k tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import Tensor

DEFAULT_CHUNK_TOKENS = 4096  # [4096, 151936] bf16 logits = 1.2 GiB per chunk; the matmul is already large


def fused_linear_logp(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, *,
    chunk_size: int = DEFAULT_CHUNK_TOKENS, compute_dtype: torch.dtype = torch.float32, with_entropy: bool = False,
    compile: bool = False, keep_logits: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of `targets` under logits = hidden @ weight^T + bias, computed chunk by chunk.

    hidden: [..., H] float. weight: [V, H] float (an fp32 master weight is cast to `compute_dtype` inside).
    targets: [...] int64 in [0, V) (padding positions need a valid id; mask them in the loss). bias: [V] or None.
    compute_dtype: the matmul dtype, float32 (`fp32_lm_head`) or the autocast dtype (bf16/fp16); autocast is off
    inside, so the caller's autocast context does not change it. logsumexp and the softmax are fp32 either way.
    chunk_size: tokens per chunk; memory is O(chunk_size x V). compile: torch.compile the per-chunk kernels (GPU).
    keep_logits: when a gradient will be taken, keep every chunk's logits (in compute_dtype) for the backward instead
    of recomputing them there: one head matmul less per step for O(tokens x V) memory (`learner.head_recompute`).
    Returns (logp [...] f32, differentiable w.r.t. hidden, weight and bias; entropy [...] f32 or None), f64 instead
    when compute_dtype is float64 (tests). The entropy is a metric: computed from the same chunk logits in the
    forward, it carries no gradient.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if hidden.shape[:-1] != targets.shape or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and targets "
                         f"{tuple(targets.shape)} must be [..., H], [V, H] and [...]")
    lead = targets.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    keep = keep_logits and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    logp, entropy = _FusedLinearLogp.apply(flat_h, weight, bias, targets.reshape(-1), chunk_size, compute_dtype,
                                           with_entropy, compile, keep)
    return logp.view(lead), entropy.view(lead) if with_entropy else None


class _FusedLinearLogp(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk_size: int,
        compute_dtype: torch.dtype, with_entropy: bool, compile: bool, keep_logits: bool,
    ) -> tuple[Tensor, Tensor]:
        n, acc = hidden.shape[0], torch.promote_types(compute_dtype, torch.float32)
        logp = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty(n if with_entropy else 0, dtype=acc, device=hidden.device)
        stats = _kernel("stats_entropy" if with_entropy else "stats", compile)
        kept = torch.empty((n if keep_logits else 0, weight.shape[0]), dtype=compute_dtype, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(compute_dtype)
            for s in range(0, n, chunk_size):
                e = min(n, s + chunk_size)
                z = _head_matmul(hidden[s:e].to(compute_dtype), w, b, out=kept[s:e] if keep_logits else None)
                out = stats(z, targets[s:e])
                lse[s:e] = out[0]
                logp[s:e] = out[1] - out[0]
                if with_entropy:
                    entropy[s:e] = out[2]
                del z, out
        ctx.save_for_backward(hidden, weight, bias, targets, lse, kept)
        ctx.chunk_size, ctx.compute_dtype, ctx.compile, ctx.keep_logits = chunk_size, compute_dtype, compile, keep_logits
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, g_logp: Tensor, _g_entropy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, bias, targets, lse, kept = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        cdt, n = ctx.compute_dtype, hidden.shape[0]
        grad_logits = _kernel("grad", ctx.compile)
        g_h = torch.empty_like(hidden) if need_h else None
        g_w = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if need_w else None
        g_b = torch.zeros(weight.shape[0], dtype=lse.dtype, device=weight.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdt)
            b = None if bias is None else bias.to(cdt)
            for s in range(0, n, ctx.chunk_size):
                e = min(n, s + ctx.chunk_size)
                h = hidden[s:e].to(cdt)
                z = kept[s:e] if ctx.keep_logits else _head_matmul(h, w, b)
                g_z = grad_logits(z, lse[s:e], targets[s:e],
                                  g_logp[s:e].to(lse.dtype))  # [chunk, V] in cdt, as autograd of the plain path has it
                if g_h is not None:
                    g_h[s:e] = g_z @ w
                if g_w is not None:
                    _accumulate_matmul(g_w, g_z.t(), h)  # chunk partial sums in fp32
                if g_b is not None:
                    g_b.add_(g_z.sum(0, dtype=lse.dtype))
                del h, z, g_z
        return (g_h, None if g_w is None else g_w.to(weight.dtype), None if g_b is None else g_b.to(bias.dtype),
                None, None, None, None, None, None)


def _head_matmul(h: Tensor, w: Tensor, b: Tensor | None, *, out: Tensor | None = None) -> Tensor:
    """z = h w^T + b, [C, V], written into `out` (a row slice of the kept logits) when given."""
    if out is None:
        return torch.nn.functional.linear(h, w, b)
    if b is None:
        return torch.mm(h, w.t(), out=out)
    return torch.addmm(b, h, w.t(), out=out)


def _accumulate_matmul(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc += a @ b with acc fp32. On CUDA with 16-bit a and b, cuBLAS accumulates straight into acc (no 16-bit
    product and no separate add pass); elsewhere the product is taken in a's dtype and added."""
    if acc.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and acc.dtype == torch.float32:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.add_(a @ b)


# ---------------------------------------------------------------------------------------------- per-chunk kernels
def _stats(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """z: [C, V] logits in the compute dtype; targets: [C] int64. Returns (logsumexp, z at the target): [C] f32."""
    zf = _upcast(z)
    return torch.logsumexp(zf, dim=-1), zf.gather(-1, targets[:, None])[:, 0]


def _stats_entropy(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """_stats plus the entropy of p = softmax(z), [C] f32 (finite logits: a linear layer's), in two reads of z:

        m = max_v z_v,  s = sum_v e^(z_v - m),  lse = m + log s,  H = log s + sum_v e^(z_v - m) (m - z_v) / s

    (H = lse - E_p[z], written so that both terms are >= 0: no cancellation). The max is one pass over z; s and the
    second sum share the other.
    """
    zf = _upcast(z)
    m = zf.amax(-1, keepdim=True)
    shifted = zf - m  # <= 0
    e = shifted.exp()
    s = e.sum(-1)
    log_s = s.log()
    picked = zf.gather(-1, targets[:, None])[:, 0]
    return m[:, 0] + log_s, picked, log_s - (e * shifted).sum(-1) / s


def _grad(z: Tensor, lse: Tensor, targets: Tensor, g: Tensor) -> Tensor:
    """dL/dz = g * (onehot(targets) - softmax(z)) for upstream g = dL/dlogp [C] f32; returned in z's dtype.
    The one-hot is a comparison with the column index, so compiled this is one pointwise pass (read z, write g_z)."""
    p = (_upcast(z) - lse[:, None]).exp()
    onehot = torch.arange(z.shape[-1], device=z.device)[None, :] == targets[:, None]
    return (g[:, None] * (onehot.to(p.dtype) - p)).to(z.dtype)


def _upcast(z: Tensor) -> Tensor:
    return z if z.dtype == torch.float64 else z.float()


_KERNELS: dict[str, Callable[..., Any]] = {"stats": _stats, "stats_entropy": _stats_entropy, "grad": _grad}


# Each chunk has thousands of rows, enough parallelism without splitting a row's 151,936-wide reduction over
# several programs; unsplit, Inductor keeps one looped reduction per row (and can use its online softmax).
_COMPILE_OPTIONS = {"split_reductions": False}


@cache
def _kernel(name: str, compile: bool) -> Callable[..., Any]:
    """The eager kernel, or its torch.compile'd version. Shapes are specialised first and made dynamic only where
    they change (dynamo's automatic dynamic shapes): the row count of a last, shorter chunk becomes dynamic, the
    vocabulary stays a constant, which keeps a pointwise kernel's [C, V] index arithmetic cheap (with a dynamic V
    the softmax-gradient kernel ran at a third of the memory bandwidth)."""
    fn = _KERNELS[name]
    return torch.compile(fn, options=_COMPILE_OPTIONS) if compile else fn


__all__ = ["DEFAULT_CHUNK_TOKENS", "fused_linear_logp"]
