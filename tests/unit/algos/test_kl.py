"""Hand-computed tests for rlplat.algos.kl."""

from __future__ import annotations

import math

import pytest
import torch

from rlplat.algos.kl import KL_KINDS, adaptive_kl_coef, kl_estimate, kl_penalized_rewards, masked_kl_mean

LN2 = math.log(2.0)  # 0.693147

# two tokens: d = logp - logp_ref = +ln2 (0.5 vs 0.25) and -ln2 (0.25 vs 0.5)
LOGP = torch.tensor([[math.log(0.5), math.log(0.25)]])
LOGP_REF = torch.tensor([[math.log(0.25), math.log(0.5)]])


def test_k1_abs_k2() -> None:
    torch.testing.assert_close(kl_estimate(LOGP, LOGP_REF, "k1"), torch.tensor([[LN2, -LN2]]))
    torch.testing.assert_close(kl_estimate(LOGP, LOGP_REF, "abs"), torch.tensor([[LN2, LN2]]))
    # k2 = d^2 / 2 = 0.480453 / 2 = 0.240227
    torch.testing.assert_close(kl_estimate(LOGP, LOGP_REF, "k2"), torch.tensor([[0.240227, 0.240227]]))


def test_k3() -> None:
    # k3 = e^(ref - logp) - (ref - logp) - 1
    # d = +ln2: 0.5 + 0.693147 - 1 = 0.193147;  d = -ln2: 2 - 0.693147 - 1 = 0.306853
    torch.testing.assert_close(kl_estimate(LOGP, LOGP_REF, "k3"), torch.tensor([[0.193147, 0.306853]]))


def test_k3_clamps() -> None:
    # ref - logp = 30 -> clamped to 20 -> e^20 - 21 -> value clamped to 10
    # ref - logp = -30 -> clamped to -20 -> e^-20 + 19 ~= 19 -> value clamped to 10
    out = kl_estimate(torch.tensor([[0.0, 0.0]]), torch.tensor([[30.0, -30.0]]), "k3")
    torch.testing.assert_close(out, torch.tensor([[10.0, 10.0]]))


def test_k1_and_k3_are_unbiased_under_exact_expectation() -> None:
    # sum_x p(x) k(x) = KL(p || q) for k1 and k3 (exact expectation over a 3-way categorical)
    # KL = 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0 = 0.5*0.693147 - 0.25*0.693147 = 0.173287
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.5, 0.25])
    for kind in ("k1", "k3"):
        expectation = (p * kl_estimate(p.log(), q.log(), kind)).sum()
        torch.testing.assert_close(expectation, torch.tensor(0.25 * LN2))


def test_straight_through_value_and_gradient() -> None:
    for kind, base in (("k3+", "k3"), ("k1+", "k1")):
        logp = LOGP.clone().requires_grad_()
        out = kl_estimate(logp, LOGP_REF, kind)
        torch.testing.assert_close(out, kl_estimate(LOGP, LOGP_REF, base))  # forward value of k3 / k1
        out.sum().backward()
        assert logp.grad is not None
        torch.testing.assert_close(logp.grad, torch.tensor([[LN2, -LN2]]))  # grad of k2 = d


def test_k3_gradient() -> None:
    # d k3 / d logp = -e^(ref - logp) + 1: d=+ln2 -> 1 - 0.5 = 0.5; d=-ln2 -> 1 - 2 = -1
    logp = LOGP.clone().requires_grad_()
    kl_estimate(logp, LOGP_REF, "k3").sum().backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[0.5, -1.0]]))


@pytest.mark.parametrize("kind", ["k1", "abs", "k2", "k3", "k1+", "k3+"])
def test_mask_zeroes_padding_and_its_gradient(kind: str) -> None:
    # padding holds -inf log-probs: output 0 there and a finite (zero) gradient
    logp = torch.tensor([[math.log(0.5), -math.inf]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), -math.inf]])
    out = kl_estimate(logp, ref, kind, mask=torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(out[:, 1], torch.zeros(1))
    torch.testing.assert_close(out[:, 0], kl_estimate(LOGP[:, :1], LOGP_REF[:, :1], kind)[:, 0])
    out.sum().backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all() and logp.grad[0, 1].item() == 0.0


def test_kl_estimate_bad_inputs() -> None:
    assert set(KL_KINDS) == {"k1", "abs", "k2", "k3", "k1+", "k3+"}
    with pytest.raises(ValueError):
        kl_estimate(LOGP, LOGP_REF, "low_var_kl")
    with pytest.raises(ValueError):
        kl_estimate(LOGP, LOGP_REF[:, :1], "k1")
    with pytest.raises(ValueError):
        kl_estimate(LOGP, LOGP_REF, "k1", mask=torch.ones(1, 3))


def test_kl_penalized_rewards() -> None:
    # token 0: 0 - 0.1 * ln2 = -0.0693147; token 1: 1 - 0.1 * 0 = 1; token 2 masked -> 0
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    logp_old = torch.tensor([[math.log(0.5), math.log(0.5), 0.0]])
    logp_ref = torch.tensor([[math.log(0.25), math.log(0.5), -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = kl_penalized_rewards(rewards, logp_old, logp_ref, mask, coef=0.1)
    torch.testing.assert_close(out, torch.tensor([[-0.0693147, 1.0, 0.0]]))


def test_masked_kl_mean() -> None:
    # k1 over unmasked tokens (ln2, -ln2) -> 0; with only the first token -> ln2
    torch.testing.assert_close(masked_kl_mean(LOGP, LOGP_REF, torch.ones(1, 2), "k1"), torch.tensor(0.0))
    torch.testing.assert_close(masked_kl_mean(LOGP, LOGP_REF, torch.tensor([[1.0, 0.0]]), "k1"), torch.tensor(LN2))


def test_adaptive_kl_coef() -> None:
    # KL 0.15 vs target 0.1: error 0.5 clipped to 0.2 -> 0.1 * (1 + 0.2 * 100 / 1000) = 0.102
    assert adaptive_kl_coef(0.1, 0.15, target=0.1, horizon=1000, n_steps=100) == pytest.approx(0.102)
    # KL 0.09: error -0.1 -> 0.1 * (1 - 0.1 * 100 / 1000) = 0.099
    assert adaptive_kl_coef(0.1, 0.09, target=0.1, horizon=1000, n_steps=100) == pytest.approx(0.099)
    # KL 0: error -1 clipped to -0.2 -> 0.1 * (1 - 0.2 * 0.5) = 0.09
    assert adaptive_kl_coef(0.1, 0.0, target=0.1, horizon=10, n_steps=5) == pytest.approx(0.09)
    with pytest.raises(ValueError):
        adaptive_kl_coef(0.1, 0.1, target=0.1, horizon=0, n_steps=1)
    with pytest.raises(ValueError):
        adaptive_kl_coef(0.1, 0.1, target=0.0, horizon=10, n_steps=1)
