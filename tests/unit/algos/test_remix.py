"""Hand-computed tests for rlplat.algos.remix."""

from __future__ import annotations

import math

import pytest
import torch

from rlplat.algos.kl import kl_estimate
from rlplat.algos.losses import ppo_clip_loss
from rlplat.algos.remix import (
    kl_convex_lambda,
    kl_convex_penalty,
    mix_ppo_clip_loss,
    replay_enabled,
    sample_replay_lags,
    updates_per_batch,
)

LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------------ Mix-PPG


def test_mix_ppo_hand_computed_replayed_row() -> None:
    # behaviour pi_{k-i} = 0.5, pre-update pi_k = 0.75 -> centre c = 1.5, window [1.3, 1.7] (clip 0.2)
    # pi_theta = (0.95, 0.8, 0.6) -> r = (1.9, 1.6, 1.2); A = (1, 1, -1)
    #  t0 r=1.9 A=+1: max(-1.9, -1.7) = -1.7  clipped
    #  t1 r=1.6 A=+1: max(-1.6, -1.6) = -1.6
    #  t2 r=1.2 A=-1: max( 1.2,  1.3) =  1.3  clipped (plain PPO, window [0.8, 1.2], would not clip it)
    # loss = (-1.7 - 1.6 + 1.3) / 3 = -2/3; grad only t1: -A r / 3 = -1.6 / 3
    logp = torch.tensor([[math.log(0.95), math.log(0.8), math.log(0.6)]], requires_grad=True)
    logp_old = torch.full((1, 3), math.log(0.5))
    logp_prox = torch.full((1, 3), math.log(0.75))
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, metrics = mix_ppo_clip_loss(logp, logp_old, logp_prox, adv, torch.ones(1, 3))
    assert loss.item() == pytest.approx(-2 / 3, abs=1e-6)
    assert metrics["clip_frac"].item() == pytest.approx(2 / 3)
    assert metrics["centre_mean"].item() == pytest.approx(1.5)
    assert metrics["ratio_mean"].item() == pytest.approx((1.9 + 1.6 + 1.2) / 3)
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1.6 / 3, 0.0]]))


def test_mix_ppo_reduces_to_ppo_on_fresh_data() -> None:
    g = torch.Generator().manual_seed(0)
    logp_old = -torch.rand(3, 5, generator=g)
    logp = (logp_old + 0.3 * torch.randn(3, 5, generator=g)).requires_grad_()
    adv = torch.randn(3, 5, generator=g)
    mask = (torch.rand(3, 5, generator=g) > 0.2).float()
    kw = {"clip_low": 0.2, "clip_high": 0.28, "agg": "seq-mean-token-mean"}
    mix, mix_metrics = mix_ppo_clip_loss(logp, logp_old, logp_old, adv, mask, **kw)  # type: ignore[arg-type]
    (mix_grad,) = torch.autograd.grad(mix, logp)
    ppo, ppo_metrics = ppo_clip_loss(logp, logp_old, adv, mask, **kw)  # type: ignore[arg-type]
    (ppo_grad,) = torch.autograd.grad(ppo, logp)
    torch.testing.assert_close(mix, ppo)
    torch.testing.assert_close(mix_grad, ppo_grad)
    torch.testing.assert_close(mix_metrics["clip_frac"], ppo_metrics["clip_frac"])
    assert mix_metrics["centre_mean"].item() == pytest.approx(1.0)


def test_mix_ppo_bad_inputs() -> None:
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError):
        mix_ppo_clip_loss(x, x, torch.zeros(1, 2), x, torch.ones(1, 3))
    with pytest.raises(ValueError):
        mix_ppo_clip_loss(x, x, x, x, torch.ones(1, 3), clip_low=-0.1)
    with pytest.raises(ValueError):
        mix_ppo_clip_loss(x, x, x, x, torch.ones(1, 3), agg="bogus")


# ------------------------------------------------------------------------------------------------ KL-convex


def test_kl_convex_penalty_hand_computed() -> None:
    # pi = 0.5, base = 0.25, prev = 0.5
    # k1: 0.7 * ln2 + 0.3 * 0 = 0.485203;  k3: 0.7 * (0.5 + ln2 - 1) + 0.3 * 0 = 0.7 * 0.193147 = 0.135203
    logp = torch.tensor([[math.log(0.5)]])
    base = torch.tensor([[math.log(0.25)]])
    prev = torch.tensor([[math.log(0.5)]])
    torch.testing.assert_close(kl_convex_penalty(logp, base, prev, lam=0.7, kind="k1"), torch.tensor([[0.485203]]))
    torch.testing.assert_close(kl_convex_penalty(logp, base, prev, lam=0.7), torch.tensor([[0.135203]]))
    torch.testing.assert_close(kl_convex_penalty(logp, base, prev, lam=1.0), kl_estimate(logp, base, "k3"))


def test_kl_convex_penalty_gradient_only_through_logp() -> None:
    # d/dlogp of lam*k3(base) + (1-lam)*k3(prev) with k3' = 1 - e^(ref - logp):
    # 0.7 * (1 - 0.5) + 0.3 * (1 - 1) = 0.35
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    base = torch.tensor([[math.log(0.25)]], requires_grad=True)
    prev = torch.tensor([[math.log(0.5)]], requires_grad=True)
    kl_convex_penalty(logp, base, prev, lam=0.7).sum().backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[0.35]]))
    assert base.grad is None and prev.grad is None


def test_kl_convex_penalty_bad_inputs() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        kl_convex_penalty(x, x, x, lam=1.5)
    with pytest.raises(ValueError):
        kl_convex_penalty(x, x, torch.zeros(1, 3), lam=0.5)
    with pytest.raises(ValueError):
        kl_convex_penalty(x, x, x, lam=0.5, kind="k4")


def test_kl_convex_lambda_schedule() -> None:
    # lam(t) = max(1 - 0.1 * ceil(max(t - 50, 0) / 10), 0.5)
    expected = {1: 1.0, 50: 1.0, 51: 0.9, 60: 0.9, 61: 0.8, 90: 0.6, 91: 0.5, 1000: 0.5}
    for step, lam in expected.items():
        assert kl_convex_lambda(step) == pytest.approx(lam), step
    # restart after reincarnation at 100: step 100 is still 0.5; step 101 -> t = 1 -> 1.0; 151 -> t = 51 -> 0.9
    assert kl_convex_lambda(100, restart_step=100) == pytest.approx(0.5)
    assert kl_convex_lambda(101, restart_step=100) == pytest.approx(1.0)
    assert kl_convex_lambda(151, restart_step=100) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        kl_convex_lambda(10, interval=0)


# ------------------------------------------------------------------------------------------------ reincarnation, replay


def test_replay_enabled() -> None:
    assert replay_enabled(50, reincarnation_step=50)
    assert not replay_enabled(51, reincarnation_step=50)
    assert replay_enabled(10_000, reincarnation_step=None)


def test_sample_replay_lags() -> None:
    assert sample_replay_lags(20, p_off=0.0, window=2).tolist() == [0] * 20
    always = sample_replay_lags(200, p_off=1.0, window=2, generator=torch.Generator().manual_seed(0))
    assert set(always.tolist()) == {1, 2}
    lags = sample_replay_lags(20_000, p_off=0.4, window=2, generator=torch.Generator().manual_seed(1))
    assert lags.dtype == torch.int64
    # fresh 0.6; lag 1 and lag 2 each 0.4 / 2 = 0.2 (uniform nu); 20k draws -> std ~0.003
    frac = torch.bincount(lags, minlength=3).float() / lags.numel()
    torch.testing.assert_close(frac, torch.tensor([0.6, 0.2, 0.2]), atol=0.02, rtol=0.0)
    with pytest.raises(ValueError):
        sample_replay_lags(4, p_off=1.5, window=2)
    with pytest.raises(ValueError):
        sample_replay_lags(4, p_off=0.5, window=0)


def test_updates_per_batch_returns_to_the_base_count_after_reincarnation() -> None:
    kw = {"update_to_data": 4, "base_updates": 1}
    assert [updates_per_batch(t, reincarnation_step=50, base_after_reincarnation=True, **kw)
            for t in (1, 50, 51, 100)] == [4, 4, 1, 1]
    assert [updates_per_batch(t, reincarnation_step=50, base_after_reincarnation=False, **kw)
            for t in (1, 50, 51)] == [4, 4, 4]
    assert updates_per_batch(10**6, reincarnation_step=None, base_after_reincarnation=True, **kw) == 4  # never
