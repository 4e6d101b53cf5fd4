"""The fused, chunked LM head against the naive full-logits computation, and PolicyLearner with it against the plain
full-logits path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlplat.algos.losses import entropy_from_logits, logp_from_logits
from rlplat.config import AlgorithmConfig, LearnerConfig, LoraConfig
from rlplat.learners.fused_head import fused_linear_logp
from rlplat.learners.microbatch import make_micro_batches

from .test_policy_learner import _batch, _samples

N, H, V = 37, 8, 29


def _inputs(dtype: torch.dtype = torch.float64, *, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, b, targets


def _naive(hidden, weight, bias, targets):
    z = torch.nn.functional.linear(hidden, weight, bias)
    logp = torch.log_softmax(z, -1)
    return logp.gather(-1, targets[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


def _grads(out, upstream, *inputs):
    return torch.autograd.grad((out * upstream).sum(), [x for x in inputs if x is not None])


@pytest.mark.parametrize("chunk", [1, 5, 16, 36, 37, 100])
@pytest.mark.parametrize("bias", [True, False])
def test_float64_matches_full_logits(chunk: int, bias: bool) -> None:
    hidden, weight, b, targets = _inputs(bias=bias)
    upstream = torch.randn(N, dtype=torch.float64)
    logp, entropy = fused_linear_logp(hidden, weight, targets, b, chunk_size=chunk, compute_dtype=torch.float64,
                                      with_entropy=True)
    ref_logp, ref_entropy = _naive(hidden, weight, b, targets)
    assert logp.dtype == torch.float64 and entropy is not None and not entropy.requires_grad
    torch.testing.assert_close(logp, ref_logp, atol=1e-12, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-12, rtol=0)
    for got, want in zip(_grads(logp, upstream, hidden, weight, b), _grads(ref_logp, upstream, hidden, weight, b),
                         strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_gradcheck() -> None:
    hidden, weight, b, targets = _inputs()
    assert torch.autograd.gradcheck(
        lambda h, w, bb: fused_linear_logp(h, w, targets, bb, chunk_size=7, compute_dtype=torch.float64)[0],
        (hidden, weight, b))


def test_masked_positions_get_no_gradient_and_leading_dims_are_kept() -> None:
    hidden, weight, b, targets = _inputs()
    mask = (torch.arange(N) % 3 != 0).double().view(1, N)  # e.g. prompt and padding positions
    logp, entropy = fused_linear_logp(hidden.view(1, N, H), weight, targets.view(1, N), b, chunk_size=6,
                                      compute_dtype=torch.float64)
    assert logp.shape == (1, N) and entropy is None
    loss = -(logp * mask).sum() / mask.sum()
    g_h, g_w, g_b = torch.autograd.grad(loss, (hidden, weight, b))
    assert float(g_h[mask[0] == 0].abs().max()) == 0.0 and float(g_h[mask[0] == 1].abs().max()) > 0
    ref = -(_naive(hidden, weight, b, targets)[0] * mask[0]).sum() / mask.sum()
    for got, want in zip((g_h, g_w, g_b), torch.autograd.grad(ref, (hidden, weight, b)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_fp32_matches_the_plain_fp32_head_under_autocast() -> None:
    """compute_dtype float32 stays fp32 inside a caller's bf16 autocast (the `fp32_lm_head` contract)."""
    hidden, weight, b, targets = (x.float().detach().requires_grad_() if x.is_floating_point() else x
                                  for x in _inputs())
    upstream = torch.randn(N)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, entropy = fused_linear_logp(hidden, weight, targets, b, chunk_size=10, with_entropy=True)
    z = torch.nn.functional.linear(hidden, weight, b)
    ref = logp_from_logits(z, targets)
    assert logp.dtype == torch.float32 and entropy is not None
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, entropy_from_logits(z.detach()), atol=1e-5, rtol=0)
    for got, want in zip(_grads(logp, upstream, hidden, weight, b), _grads(ref, upstream, hidden, weight, b),
                         strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bf16_matches_the_plain_autocast_head() -> None:
    """compute_dtype bf16 on fp32 master weights: the plain path's casts (bf16 matmul, fp32 log-softmax)."""
    hidden, weight, b, targets = (x.float().detach().requires_grad_() if x.is_floating_point() else x
                                  for x in _inputs())
    upstream = torch.randn(N)
    logp, entropy = fused_linear_logp(hidden, weight, targets, b, chunk_size=8, compute_dtype=torch.bfloat16,
                                      with_entropy=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = torch.nn.functional.linear(hidden, weight, b)
    assert z.dtype == torch.bfloat16
    ref = logp_from_logits(z, targets)
    torch.testing.assert_close(logp, ref, atol=1e-6, rtol=0)  # same bf16 logits, same fp32 reduction
    torch.testing.assert_close(entropy, entropy_from_logits(z.detach()), atol=1e-5, rtol=0)
    for got, want in zip(_grads(logp, upstream, hidden, weight, b), _grads(ref, upstream, hidden, weight, b),
                         strict=True):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)  # bf16 gradient logits, rounded per chunk


@pytest.mark.parametrize("bias", [True, False])
def test_kept_logits_give_the_recomputed_result(bias: bool) -> None:
    hidden, weight, b, targets = _inputs(bias=bias)
    upstream = torch.randn(N, dtype=torch.float64)
    results = []
    for keep in (False, True):
        logp, _ = fused_linear_logp(hidden, weight, targets, b, chunk_size=5, compute_dtype=torch.float64,
                                    keep_logits=keep)
        results.append((logp, *_grads(logp, upstream, hidden, weight, b)))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    with torch.no_grad():  # nothing to keep without a gradient: still the same log-probs
        torch.testing.assert_close(fused_linear_logp(hidden, weight, targets, b, chunk_size=5,
                                                     compute_dtype=torch.float64, keep_logits=True)[0], results[0][0])


def test_rejects_bad_shapes() -> None:
    hidden, weight, b, targets = _inputs()
    with pytest.raises(ValueError):
        fused_linear_logp(hidden, weight, targets[:-1], b)
    with pytest.raises(ValueError):
        fused_linear_logp(hidden, weight, targets, b, chunk_size=0)


# ------------------------------------------------------------------------------------------------ PolicyLearner
def _learner(model_dir: Path, chunk: int, algo: AlgorithmConfig | None = None, **kw: object):
    from rlplat.learners.policy import PolicyLearner

    cfg = LearnerConfig(lr=1e-2, **kw.pop("learner", {}))  # type: ignore[arg-type]
    return PolicyLearner(str(model_dir), cfg, algo or AlgorithmConfig(), dtype="float32", seed=0,
                         head_chunk_tokens=chunk, **kw)  # type: ignore[arg-type]


def _train_once(model_dir: Path, chunk: int, algo: AlgorithmConfig | None = None, **kw: object):
    learner = _learner(model_dir, chunk, algo, **kw)
    m = learner.train_step(_batch(_samples(learner)))  # behaviour log-probs: the plain path's sequence_logps
    return m, {n: p.grad.clone() for n, p in learner.params.items() if p.grad is not None}, learner


@pytest.mark.parametrize(("algo", "kw", "atol"), [
    (AlgorithmConfig(), {}, 1e-6),
    # Recomputed log pi_k and the reference swapped in; the kept gradient is the second update's, after one AdamW
    # step on weights that differ by rounding.
    (AlgorithmConfig(kl_coef=0.1, num_updates_per_batch=2), {}, 2e-5),
    (AlgorithmConfig(kl_coef=0.1), {"lora": LoraConfig(rank=4)}, 1e-6),  # reference = adapter-disabled base
    (AlgorithmConfig(), {"learner": {"head_recompute": False}}, 1e-6),  # chunk logits kept for the backward
], ids=["grpo-single-pass", "kl-two-updates", "lora-kl", "kept-logits"])
def test_train_step_equals_the_plain_full_logits_head(tiny_model_dir: Path, algo: AlgorithmConfig, kw: dict,
                                                      atol: float) -> None:
    plain_m, plain_g, plain = _train_once(tiny_model_dir, 0, algo, **kw)
    assert plain.head_chunk_tokens == 0
    for chunk in (7, 4096):  # 7 divides no micro-batch's token count here
        m, g, learner = _train_once(tiny_model_dir, chunk, algo, **kw)
        assert learner.head_chunk_tokens == chunk
        for key in ("loss/policy", "train/entropy", "train/grad_norm", "train/logp_old_vs_behaviour"):
            assert m[key] == pytest.approx(plain_m[key], rel=1e-5, abs=1e-6), key
        if "loss/kl_ref" in plain_m:
            assert m["loss/kl_ref"] == pytest.approx(plain_m["loss/kl_ref"], rel=1e-4, abs=1e-7)
        assert set(g) == set(plain_g) and g
        for name in g:
            torch.testing.assert_close(g[name], plain_g[name], atol=atol, rtol=1e-4 if atol < 1e-5 else 1e-3)


def test_no_grad_logp_equals_logp_from_logits(tiny_model_dir: Path) -> None:
    learner = _learner(tiny_model_dir, 5)
    (mb,) = make_micro_batches(_samples(learner, groups=1), None, token_budget=10_000)
    with torch.no_grad():
        fused = learner._logp(mb)
        plain = logp_from_logits(learner._logits(mb.input_ids), mb.targets)
        frozen = learner._logp(mb, {n: p.detach().clone() for n, p in learner.params.items()})
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(frozen, plain, atol=1e-6, rtol=0)


def test_compiled_kernels_match_eager() -> None:
    """`compile=True` (the GPU learner's setting) runs the same per-chunk math through Inductor: the CPU build of
    those kernels gives the eager results, gradients included."""
    hidden, weight, b, targets = _inputs(torch.float32)
    upstream = torch.randn(N)
    outs = {}
    for compiled in (False, True):
        logp, entropy = fused_linear_logp(hidden, weight, targets, b, chunk_size=16, with_entropy=True,
                                          compile=compiled)
        outs[compiled] = (logp, entropy, *_grads(logp, upstream, hidden, weight, b))
    for got, want in zip(outs[True], outs[False], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("keep", [False, True])
def test_cuda_bf16_head_matches_float64(compiled: bool, keep: bool) -> None:
    """The GPU path at a real vocabulary size: bf16 matmuls (kept or recomputed logits, fp32-accumulating weight
    gradient through cuBLAS, compiled kernels) against the float64 computation, within bf16 rounding."""
    g = torch.Generator(device="cuda").manual_seed(0)
    n, hid, vocab = 5000, 896, 151936  # 5000 tokens: a full 4096 chunk and a shorter one
    hidden = (torch.randn(n, hid, device="cuda", generator=g) * 0.5).requires_grad_()
    weight = (torch.randn(vocab, hid, device="cuda", generator=g) * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device="cuda", generator=g)
    upstream = torch.randn(n, device="cuda", generator=g)

    def run(dtype: torch.dtype, **kw: bool):
        logp, entropy = fused_linear_logp(hidden, weight, targets, chunk_size=4096, with_entropy=True,
                                          compute_dtype=dtype, **kw)
        return (logp, entropy, *_grads(logp, upstream, hidden, weight))

    want = run(torch.float64)
    got = run(torch.bfloat16, compile=compiled, keep_logits=keep)
    for name, a, b, tol in zip(("logp", "entropy", "grad_hidden", "grad_weight"), got, want, (2e-3, 1e-4, 2e-2, 2e-2),
                               strict=True):
        rel = float((a.double() - b).abs().max() / b.abs().max())
        assert rel < tol, (name, rel)
