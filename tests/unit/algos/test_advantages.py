"""Hand-computed and loop-equivalence tests for rlplat.algos.advantages."""

from __future__ import annotations

import pytest
import torch

from rlplat.algos.advantages import (
    ADVANTAGE_FNS,
    batch_normalize,
    gae,
    grpo_advantages,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    whiten,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ GRPO


def test_grpo_mean_baseline_two_groups() -> None:
    # group 0: mean(1, 0) = 0.5 -> [0.5, -0.5]; group 1: mean(2, 2) = 2 -> [0, 0]
    adv = grpo_advantages(t(1, 0, 2, 2), torch.tensor([0, 0, 1, 1]), std_normalize=False)
    torch.testing.assert_close(adv, t(0.5, -0.5, 0.0, 0.0))


def test_grpo_std_normalised_unsorted_ids_and_singleton() -> None:
    # ids 7: rewards (0, 2, 4): mean 2, unbiased var (4 + 0 + 4) / 2 = 4, std 2 -> (-1, 0, 1)
    # ids 3: rewards (1, 1): std 0 -> 0 / (0 + 1e-6) = 0
    # id 9: singleton -> mean 0, std 1 (verl) -> 5 / (1 + 1e-6) ~= 5
    rewards = t(0, 1, 2, 5, 1, 4)
    ids = torch.tensor([7, 3, 7, 9, 3, 7])
    adv = grpo_advantages(rewards, ids)
    torch.testing.assert_close(adv, t(-1, 0, 0, 5, 0, 1), rtol=1e-5, atol=1e-5)
    assert adv.dtype == torch.float32


def test_grpo_uses_unbiased_std() -> None:
    # (1, 0): mean 0.5, unbiased std sqrt(0.5) = 0.70711 -> 0.5 / 0.70711 = 0.70711 (population std would give 1)
    adv = grpo_advantages(t(1, 0), torch.tensor([0, 0]))
    torch.testing.assert_close(adv, t(0.707106, -0.707106), rtol=1e-5, atol=1e-5)


def _grpo_loop(rewards: torch.Tensor, ids: torch.Tensor, std_normalize: bool, eps: float) -> torch.Tensor:
    out = torch.empty_like(rewards)
    for gid in ids.unique().tolist():
        idx = (ids == gid).nonzero().squeeze(-1)
        r = rewards[idx]
        mean, std = (r.mean(), r.std()) if len(idx) > 1 else (torch.tensor(0.0), torch.tensor(1.0))
        out[idx] = (r - mean) / (std + eps) if std_normalize else r - mean
    return out


@pytest.mark.parametrize("std_normalize", [True, False])
def test_grpo_matches_per_group_loop(std_normalize: bool) -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(64, generator=g)
    ids = torch.randint(0, 12, (64,), generator=g) * 3  # non-contiguous ids, varied group sizes incl. singletons
    got = grpo_advantages(rewards, ids, std_normalize=std_normalize)
    torch.testing.assert_close(got, _grpo_loop(rewards, ids, std_normalize, 1e-6))


def test_grpo_detaches_and_casts_int_rewards() -> None:
    r = t(1.0, 0.0).requires_grad_()
    assert not grpo_advantages(r, torch.tensor([0, 0])).requires_grad
    adv = grpo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]), std_normalize=False)
    torch.testing.assert_close(adv, t(0.5, -0.5))


def test_grpo_bad_inputs() -> None:
    with pytest.raises(ValueError):
        grpo_advantages(t(1, 0, 1), torch.tensor([0, 0]))  # length mismatch
    with pytest.raises(ValueError):
        grpo_advantages(t(1, 0), torch.tensor([0.0, 0.0]))  # float ids
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(2, 2), torch.tensor([0, 0]))  # not 1-D


# ------------------------------------------------------------------------------------------------ RLOO


def test_rloo_hand_computed() -> None:
    # group a (0, 2, 4): 0 - mean(2, 4) = -3, 2 - mean(0, 4) = 0, 4 - mean(0, 2) = 3
    # group b (1, 3): 1 - 3 = -2, 3 - 1 = 2;  singleton 5: baseline 0 -> 5
    adv = rloo_advantages(t(0, 1, 2, 3, 4, 5), torch.tensor([0, 1, 0, 1, 0, 2]))
    torch.testing.assert_close(adv, t(-3, -2, 0, 2, 3, 5))


def test_rloo_matches_leave_one_out_loop() -> None:
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(40, generator=g)
    ids = torch.randint(0, 8, (40,), generator=g)
    expected = torch.empty_like(rewards)
    for i in range(40):
        others = [j for j in range(40) if ids[j] == ids[i] and j != i]
        expected[i] = rewards[i] - rewards[others].mean() if others else rewards[i]
    torch.testing.assert_close(rloo_advantages(rewards, ids), expected)


# ------------------------------------------------------------------------------------------------ REINFORCE++


def test_reinforce_pp_unweighted() -> None:
    # centred: (0.5, -0.5, 0, 0); batch mean 0; unbiased var (0.25 + 0.25) / 3 = 1/6; std 0.408248
    # -> 0.5 / 0.408248 = 1.224745
    adv = reinforce_pp_advantages(t(1, 0, 2, 2), torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(adv, t(1.224745, -1.224745, 0, 0), rtol=1e-5, atol=1e-5)


def test_reinforce_pp_token_weighted() -> None:
    # centred a = (0.5, -0.5, 0, 0), weights L = (1, 3, 1, 1), sum 6
    # mu = (0.5 - 1.5) / 6 = -1/6; a - mu = (2/3, -1/3, 1/6, 1/6)
    # var = (1*4/9 + 3*1/9 + 1/36 + 1/36) / (6 - 1) = (5/6) / 5 = 1/6, std 0.408248
    # A = (2/3, -1/3, 1/6, 1/6) / 0.408248 = (1.632993, -0.816497, 0.408248, 0.408248)
    lengths = torch.tensor([1, 3, 1, 1])
    adv = reinforce_pp_advantages(t(1, 0, 2, 2), torch.tensor([0, 0, 1, 1]), response_lengths=lengths)
    torch.testing.assert_close(adv, t(1.632993, -0.816497, 0.408248, 0.408248), rtol=1e-5, atol=1e-5)


def test_reinforce_pp_weighted_equals_token_broadcast_whitening() -> None:
    # verl's form: broadcast the centred advantage over the response tokens, then masked-whiten the [B, T] matrix
    g = torch.Generator().manual_seed(2)
    rewards = torch.randn(12, generator=g)
    ids = torch.arange(12) // 3
    lengths = torch.randint(1, 6, (12,), generator=g)
    mask = (torch.arange(6)[None, :] < lengths[:, None]).float()
    centred = grpo_advantages(rewards, ids, std_normalize=False)
    token_level = whiten(centred[:, None] * mask, mask)
    got = reinforce_pp_advantages(rewards, ids, response_lengths=lengths)
    torch.testing.assert_close(got, token_level[:, 0], rtol=1e-5, atol=1e-6)


def test_reinforce_pp_needs_two_samples() -> None:
    with pytest.raises(ValueError):
        reinforce_pp_advantages(t(1.0), torch.tensor([0]))


# ------------------------------------------------------------------------------------------------ ReMax, ScaleRL


def test_remax_hand_computed() -> None:
    # (1 - 0.5, 0 - 0.5, 1 - 1)
    torch.testing.assert_close(remax_advantages(t(1, 0, 1), t(0.5, 0.5, 1)), t(0.5, -0.5, 0))
    with pytest.raises(ValueError):
        remax_advantages(t(1, 0, 1), t(0.5, 0.5))


def test_batch_normalize_hand_computed() -> None:
    # (1, -1, 1, -1): unbiased std sqrt(4 / 3) = 1.154701 -> +-0.866025; no mean shift
    torch.testing.assert_close(
        batch_normalize(t(1, -1, 1, -1)), t(0.866025, -0.866025, 0.866025, -0.866025), rtol=1e-5, atol=1e-5
    )
    # (3, 1): mean is NOT removed: std sqrt(2) = 1.414214 -> (2.121320, 0.707107)
    torch.testing.assert_close(batch_normalize(t(3, 1)), t(2.121320, 0.707107), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch_normalize(t(2.0)), t(2.0))  # single element: unchanged


# ------------------------------------------------------------------------------------------------ GAE


def test_gae_gamma_lam_one_is_return_minus_value() -> None:
    # gamma = lam = 1: A_t = sum_{s>=t} r_s - V_t = 1 - 0.5
    adv, ret = gae(t(0, 0, 1)[None], t(0.5, 0.5, 0.5)[None], t(1, 1, 1)[None], gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, t(0.5, 0.5, 0.5)[None])
    torch.testing.assert_close(ret, t(1, 1, 1)[None])


def test_gae_hand_computed_with_padding_and_env_token() -> None:
    # gamma = lam = 0.5, gamma * lam = 0.25
    # row 0: r = (1, 0, 2, pad), V = (1, 2, 3, pad), mask (1, 1, 1, 0)
    #   t=2: delta = 2 + 0.5*0 - 3 = -1                    A = -1
    #   t=1: delta = 0 + 0.5*3 - 2 = -0.5                  A = -0.5 + 0.25*(-1) = -0.75
    #   t=0: delta = 1 + 0.5*2 - 1 = 1                     A = 1 + 0.25*(-0.75) = 0.8125
    #   ret = A + V = (1.8125, 1.25, 2, 0)
    # row 1: r = (0, 9, 1, 7), V = (1, 9, 2, 9), mask (1, 0, 1, 0)  (t=1 env token, t=3 padding: both skipped)
    #   t=2: delta = 1 + 0 - 2 = -1                        A = -1
    #   t=0: next valid is t=2: delta = 0 + 0.5*2 - 1 = 0  A = 0 + 0.25*(-1) = -0.25
    #   ret = (0.75, 0, 1, 0)
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0], [0.0, 9.0, 1.0, 7.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 9.0, 2.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.8125, -0.75, -1.0, 0.0], [-0.25, 0.0, -1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.8125, 1.25, 2.0, 0.0], [0.75, 0.0, 1.0, 0.0]]))


def _gae_loop(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    # textbook GAE on the compressed sequence of unmasked tokens of each row, scattered back
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [i for i in range(rewards.shape[1]) if mask[b, i] > 0]
        running = 0.0
        for k in reversed(range(len(idx))):
            v_next = values[b, idx[k + 1]].item() if k + 1 < len(idx) else 0.0
            delta = rewards[b, idx[k]].item() + gamma * v_next - values[b, idx[k]].item()
            running = delta + gamma * lam * running
            adv[b, idx[k]] = running
    return adv, (adv + values) * mask


def test_gae_matches_python_loop() -> None:
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(5, 9, generator=g)
    values = torch.randn(5, 9, generator=g)
    mask = (torch.rand(5, 9, generator=g) > 0.3).float()
    mask[0] = 0.0  # an all-masked row
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    exp_adv, exp_ret = _gae_loop(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, exp_adv)
    torch.testing.assert_close(ret, exp_ret)


def test_gae_no_grad_and_shape_check() -> None:
    values = torch.zeros(1, 3, requires_grad=True)
    adv, ret = gae(torch.ones(1, 3), values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError):
        gae(torch.ones(1, 3), torch.zeros(1, 4), torch.ones(1, 3), gamma=1.0, lam=1.0)


# ------------------------------------------------------------------------------------------------ whiten


def test_whiten_hand_computed() -> None:
    # unmasked (1, 2, 3): mean 2, unbiased var (1 + 0 + 1) / 2 = 1 -> (-1, 0, 1); masked entry -> 0
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    # shift_mean=False adds the mean back: (1, 2, 3)
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]))


def test_whiten_bad_inputs() -> None:
    with pytest.raises(ValueError):
        whiten(torch.ones(1, 2), torch.tensor([[1.0, 0.0]]))  # one unmasked element
    with pytest.raises(ValueError):
        whiten(torch.ones(1, 2), torch.ones(1, 3))


# ------------------------------------------------------------------------------------------------ ADVANTAGE_FNS


def test_advantage_fns_common_signature() -> None:
    rewards, ids, greedy = t(1, 0, 2, 2), torch.tensor([0, 0, 1, 1]), t(0.5, 0.5, 1, 1)
    assert {"grpo", "drgrpo", "rloo", "reinforce_pp", "remax"} <= set(ADVANTAGE_FNS)
    for name, fn in ADVANTAGE_FNS.items():
        assert fn(rewards, ids, greedy).shape == (4,), name
    torch.testing.assert_close(ADVANTAGE_FNS["drgrpo"](rewards, ids, None), t(0.5, -0.5, 0, 0))
    torch.testing.assert_close(ADVANTAGE_FNS["remax"](rewards, ids, greedy), t(0.5, -0.5, 1, 1))
    # scalerl: (0.5, -0.5, 0, 0) / unbiased std sqrt(0.5 / 3) = 0.408248 -> 1.224745
    torch.testing.assert_close(
        ADVANTAGE_FNS["scalerl"](rewards, ids, None), t(1.224745, -1.224745, 0, 0), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError):
        ADVANTAGE_FNS["remax"](rewards, ids, None)
