"""Hand-computed, equivalence and gradient tests for rlplat.algos.losses."""

from __future__ import annotations

import math

import pytest
import torch

from rlplat.algos.losses import (
    AGG_MODES,
    POLICY_LOSS_FNS,
    aggregate,
    aggregate_count,
    apply_is_weights,
    check_clip_range,
    cispo_loss,
    clean_policy_inputs,
    entropy_from_logits,
    gspo_loss,
    logp_from_logits,
    ppo_clip_loss,
    truncated_is_weights,
    value_loss,
)

# ------------------------------------------------------------------------------------------------ aggregate

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_aggregate_modes_hand_computed() -> None:
    # unmasked: row 0 (1, 2), row 1 (4)
    agg = {m: aggregate(VALUES, MASK, m, group_ids=torch.tensor([0, 1])).item() for m in AGG_MODES}
    assert agg["token-mean"] == pytest.approx(7 / 3)  # (1 + 2 + 4) / 3
    assert agg["seq-mean-token-mean"] == pytest.approx(2.75)  # (1.5 + 4) / 2
    assert agg["seq-mean-token-sum"] == pytest.approx(3.5)  # (3 + 4) / 2
    assert agg["seq-mean-token-sum-norm"] == pytest.approx(7 / 6)  # 7 / (B=2 * T=3)
    assert agg["prompt-level"] == pytest.approx(2.75)  # one sequence per prompt = seq-mean-token-mean
    assert aggregate(VALUES, MASK, "seq-mean-token-sum-norm", norm_len=4).item() == pytest.approx(7 / 8)
    # both rows one prompt: (1 + 2 + 4) / 3 tokens
    assert aggregate(VALUES, MASK, "prompt-level", group_ids=torch.tensor([3, 3])).item() == pytest.approx(7 / 3)


def test_aggregate_prompt_level_hand_computed() -> None:
    # prompt 0 = rows 0, 1: tokens (1, 1) + (3) -> 5 / 3; prompt 1 = row 2: (5) -> 5; mean (5/3 + 5) / 2 = 10/3
    values = torch.tensor([[1.0, 1.0], [3.0, 3.0], [5.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    out = aggregate(values, mask, "prompt-level", group_ids=torch.tensor([0, 0, 1]))
    assert out.item() == pytest.approx(10 / 3)


def test_aggregate_empty_rows_leave_the_average() -> None:
    # row 1 fully masked: token-mean 3/2, seq-mean-* count one sequence, sum-norm keeps the constant B * T = 4
    values = torch.tensor([[1.0, 2.0], [9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert aggregate(values, mask, "token-mean").item() == pytest.approx(1.5)
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx(1.5)
    assert aggregate(values, mask, "seq-mean-token-sum").item() == pytest.approx(3.0)
    assert aggregate(values, mask, "seq-mean-token-sum-norm").item() == pytest.approx(0.75)
    assert aggregate(values, mask, "prompt-level", group_ids=torch.tensor([0, 1])).item() == pytest.approx(1.5)
    for mode in AGG_MODES:  # all masked -> 0, not nan
        assert aggregate(values, torch.zeros(2, 2), mode, group_ids=torch.tensor([0, 1])).item() == 0.0


def test_aggregate_masked_inf_does_not_leak() -> None:
    values = torch.tensor([[1.0, math.inf]], requires_grad=True)
    out = aggregate(values, torch.tensor([[1.0, 0.0]]), "token-mean")
    out.backward()
    assert out.item() == 1.0
    assert values.grad is not None
    torch.testing.assert_close(values.grad, torch.tensor([[1.0, 0.0]]))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_micro_batches_sum_to_global(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    full = aggregate(values, mask, mode, group_ids=ids)
    counts = {
        "token-mean": mask.sum().item(),
        "seq-mean-token-mean": 6.0,
        "seq-mean-token-sum": 6.0,
        "seq-mean-token-sum-norm": 6.0,
        "prompt-level": 3.0,
    }
    splits = (slice(0, 2), slice(2, 6))  # micro-batches split on prompt boundaries
    parts = [aggregate(values[s], mask[s], mode, group_ids=ids[s], global_count=counts[mode]) for s in splits]
    torch.testing.assert_close(parts[0] + parts[1], full)
    if mode != "prompt-level":  # the learner's count, from the parts' masks alone
        assert aggregate_count(mode, [mask[s] for s in splits]) == counts[mode]


def test_aggregate_count_hand_cases() -> None:
    masks = [torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])]
    assert aggregate_count("token-mean", masks) == 3.0
    assert aggregate_count("seq-mean-token-mean", masks) == 2.0  # the empty row leaves the average
    assert aggregate_count("seq-mean-token-sum", masks) == 2.0
    assert aggregate_count("seq-mean-token-sum-norm", masks) == 3.0  # B counts every row
    assert aggregate_count("token-mean", [torch.zeros(2, 3)]) == 1.0  # never 0
    assert aggregate_count("seq-mean-token-mean", [torch.zeros(2, 3)]) == 1.0
    with pytest.raises(ValueError, match="prompt-level"):
        aggregate_count("prompt-level", masks)
    with pytest.raises(ValueError, match="'mean'"):
        aggregate_count("mean", masks)


def test_aggregate_bad_inputs() -> None:
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK, "mean")
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK[:, :2], "token-mean")
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK, "prompt-level")  # needs group_ids
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK, "prompt-level", group_ids=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm", norm_len=0)
    with pytest.raises(ValueError):
        aggregate(VALUES[0], MASK[0], "token-mean")  # 1-D


# ----------------------------------------------------------------------------------- shared policy-loss helpers


def test_clean_policy_inputs_zeroes_masked_entries_and_detaches() -> None:
    logp = torch.tensor([[-1.0, math.inf]], requires_grad=True)
    old = torch.tensor([[-2.0, math.nan]], requires_grad=True)
    adv = torch.tensor([[0.5, -math.inf]], requires_grad=True)
    lp, lo, a = clean_policy_inputs(logp, old, adv, torch.tensor([[1.0, 0.0]]), None)
    torch.testing.assert_close(lp, torch.tensor([[-1.0, 0.0]]), check_stride=False)
    torch.testing.assert_close(lo, torch.tensor([[-2.0, 0.0]]))
    torch.testing.assert_close(a, torch.tensor([[0.5, 0.0]]))
    assert lp.requires_grad and not lo.requires_grad and not a.requires_grad
    with pytest.raises(ValueError, match="is_weights"):
        clean_policy_inputs(logp, old, adv, torch.ones(1, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="2-D"):
        clean_policy_inputs(logp[0], old[0], adv[0], torch.ones(2), None)


def test_clip_range_and_is_weights() -> None:
    check_clip_range(None, 0.0)  # no lower bound (CISPO)
    with pytest.raises(ValueError, match="clip_low"):
        check_clip_range(-0.1, 0.2)
    with pytest.raises(ValueError, match="clip_high"):
        check_clip_range(0.2, -0.1)
    loss = torch.tensor([[1.0, 2.0]])
    w = torch.tensor([[0.5, 3.0]], requires_grad=True)
    assert apply_is_weights(loss, None) is loss
    weighted = apply_is_weights(loss, w)
    torch.testing.assert_close(weighted, torch.tensor([[0.5, 6.0]]))
    assert not weighted.requires_grad  # weights are constants of the loss


# ------------------------------------------------------------------------------------------------ PPO clip

# one row, logp_old = 0, ratios r = (1.5, 0.5, 1.1, 0.7), advantages (1, 1, -1, -1)
RATIOS = (1.5, 0.5, 1.1, 0.7)
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
LOGP_OLD = torch.zeros(1, 4)
ONES = torch.ones(1, 4)


def _logp(*ratios: float) -> torch.Tensor:
    return torch.tensor([[math.log(r) for r in ratios]], requires_grad=True)


def test_ppo_clip_hand_computed() -> None:
    # clip window [0.8, 1.2]:
    #  t0 r=1.5 A=+1: max(-1.5, -1.2) = -1.2  clipped
    #  t1 r=0.5 A=+1: max(-0.5, -0.8) = -0.5
    #  t2 r=1.1 A=-1: max( 1.1,  1.1) =  1.1
    #  t3 r=0.7 A=-1: max( 0.7,  0.8) =  0.8  clipped
    # token-mean: (-1.2 - 0.5 + 1.1 + 0.8) / 4 = 0.05
    logp = _logp(*RATIOS)
    loss, metrics = ppo_clip_loss(logp, LOGP_OLD, ADV, ONES)
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    assert metrics["clip_frac"].item() == pytest.approx(0.5)
    assert metrics["clip_frac_lower"].item() == 0.0
    assert metrics["ratio_mean"].item() == pytest.approx(0.95)  # 3.8 / 4
    # k3 of KL(old||new) per token = r - 1 - ln r:
    #   0.5 - 0.405465 = 0.094535, -0.5 + 0.693147 = 0.193147, 0.1 - 0.095310 = 0.004690, -0.3 + 0.356675 = 0.056675
    assert metrics["approx_kl"].item() == pytest.approx((0.094535 + 0.193147 + 0.004690 + 0.056675) / 4, abs=1e-5)
    # gradient: clipped tokens 0; else d(-A r)/dlogp / 4 = -A r / 4: t1 -0.5/4 = -0.125, t2 1.1/4 = 0.275
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.125, 0.275, 0.0]]))
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_ppo_clip_higher() -> None:
    # clip_high 0.28: t0 r=1.5 -> max(-1.5, -1.28) = -1.28; others unchanged
    # (-1.28 - 0.5 + 1.1 + 0.8) / 4 = 0.03
    loss, _ = ppo_clip_loss(_logp(*RATIOS), LOGP_OLD, ADV, ONES, clip_high=0.28)
    assert loss.item() == pytest.approx(0.03, abs=1e-6)
    # r = 1.25, A = +1: clipped with clip_high 0.2 (zero grad), not with 0.28 (grad -A r = -1.25)
    for clip_high, grad in ((0.2, 0.0), (0.28, -1.25)):
        logp = _logp(1.25)
        ppo_clip_loss(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip_high=clip_high)[0].backward()
        assert logp.grad is not None and logp.grad.item() == pytest.approx(grad)


def test_ppo_dual_clip() -> None:
    # r = 4: A=-1: max(4, 1.2) = 4 -> dual clip min(4, 3 * 1) = 3 (zero grad); A=+1: max(-4, -1.2) = -1.2 untouched
    logp = _logp(4.0, 4.0)
    adv = torch.tensor([[-1.0, 1.0]])
    loss, metrics = ppo_clip_loss(logp, torch.zeros(1, 2), adv, torch.ones(1, 2), dual_clip=3.0)
    assert loss.item() == pytest.approx((3.0 - 1.2) / 2)
    assert metrics["clip_frac_lower"].item() == pytest.approx(0.5)
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.zeros(1, 2))
    # without dual clip the A<0 token is unclipped: loss (4 - 1.2) / 2, grad -A r / 2 = 2
    logp = _logp(4.0, 4.0)
    loss, _ = ppo_clip_loss(logp, torch.zeros(1, 2), adv, torch.ones(1, 2))
    loss.backward()
    assert loss.item() == pytest.approx(1.4)
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[2.0, 0.0]]))


def test_ppo_is_weights_and_agg() -> None:
    # per-token losses (-1.2, -0.5, 1.1, 0.8) * w (2, 1, 1, 0.5) = (-2.4, -0.5, 1.1, 0.4) -> sum -1.4, mean -0.35
    w = torch.tensor([[2.0, 1.0, 1.0, 0.5]])
    loss, _ = ppo_clip_loss(_logp(*RATIOS), LOGP_OLD, ADV, ONES, is_weights=w)
    assert loss.item() == pytest.approx(-0.35, abs=1e-6)
    # seq-mean-token-sum over one sequence: 0.2
    loss, _ = ppo_clip_loss(_logp(*RATIOS), LOGP_OLD, ADV, ONES, agg="seq-mean-token-sum")
    assert loss.item() == pytest.approx(0.2, abs=1e-6)


def test_ppo_masked_padding_with_inf_gives_finite_grad() -> None:
    logp = torch.tensor([[math.log(1.1), -math.inf]], requires_grad=True)
    loss, metrics = ppo_clip_loss(
        logp, torch.tensor([[0.0, -math.inf]]), torch.tensor([[-1.0, math.nan]]), torch.tensor([[1.0, 0.0]])
    )
    loss.backward()
    assert loss.item() == pytest.approx(1.1)
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[1.1, 0.0]]))
    assert all(torch.isfinite(v) for v in metrics.values())


def test_ppo_bad_inputs() -> None:
    with pytest.raises(ValueError):
        ppo_clip_loss(_logp(*RATIOS), LOGP_OLD, ADV, ONES, dual_clip=1.0)
    with pytest.raises(ValueError):
        ppo_clip_loss(_logp(*RATIOS), LOGP_OLD[:, :3], ADV, ONES)
    with pytest.raises(ValueError):
        ppo_clip_loss(_logp(*RATIOS), LOGP_OLD, ADV, ONES, agg="sum")
    with pytest.raises(ValueError):
        ppo_clip_loss(_logp(*RATIOS), LOGP_OLD, ADV, ONES, is_weights=torch.ones(1, 3))


# ------------------------------------------------------------------------------------------------ CISPO


def test_cispo_hand_computed() -> None:
    # weights sg(min(r, 1.2)) = (1.2, 0.5, 1.1, 0.7); logp = (0.405465, -0.693147, 0.095310, -0.356675)
    # l = -w A logp = (-0.486558, 0.346574, 0.104841, -0.249673) -> mean -0.071204
    logp = _logp(*RATIOS)
    loss, metrics = cispo_loss(logp, LOGP_OLD, ADV, ONES, clip_high=0.2)
    assert loss.item() == pytest.approx(-0.071204, abs=1e-5)
    assert metrics["clip_frac"].item() == pytest.approx(0.25)
    # every token keeps a gradient: -w A / 4 = (-0.3, -0.125, 0.275, 0.175)
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.3, -0.125, 0.275, 0.175]]))


def test_cispo_lower_bound() -> None:
    # clip_low 0.2, window [0.8, 1.2]: weights (1.2, 0.8, 1.1, 0.8); three tokens truncated
    # grad -w A / 4 = (-0.3, -0.2, 0.275, 0.2)
    logp = _logp(*RATIOS)
    loss, metrics = cispo_loss(logp, LOGP_OLD, ADV, ONES, clip_low=0.2, clip_high=0.2)
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.3, -0.2, 0.275, 0.2]]))
    assert metrics["clip_frac"].item() == pytest.approx(0.75)
    with pytest.raises(ValueError):
        cispo_loss(logp, LOGP_OLD, ADV, ONES, dual_clip=3.0)


# ------------------------------------------------------------------------------------------------ GSPO


def test_gspo_hand_computed() -> None:
    # row 0: log r = (0.1, -0.3) -> log s = -0.1, s = 0.904837, A = 1: inside [0.8, 1.2], not clipped
    # row 1: log r = (0.2, masked) -> s = e^0.2 = 1.221403 > 1.2, A = 1: clipped to -1.2
    # seq-mean-token-mean: (-0.904837 + -1.2) / 2 = -1.052419
    logp = torch.tensor([[0.1, -0.3], [0.2, 7.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, metrics = gspo_loss(logp, torch.zeros(2, 2), torch.ones(2, 2), mask, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(-1.052419, abs=1e-5)
    assert metrics["clip_frac"].item() == pytest.approx(1 / 3)
    assert metrics["seq_ratio_mean"].item() == pytest.approx((0.904837 + 1.221403) / 2, abs=1e-5)
    # grad: row 0 tokens -(1/B)(1/L) A s = -(1/2)(1/2)(0.904837) = -0.226209; clipped row 1 -> 0
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.226209, -0.226209], [0.0, 0.0]]))


def test_gspo_matches_paper_form_when_unclipped() -> None:
    # paper: J = (1/B) sum_b A_b s_b, s_b = exp(mean_t log r_bt); loss = -J, same gradient as the token form
    g = torch.Generator().manual_seed(1)
    logp = (0.1 * torch.randn(4, 6, generator=g)).requires_grad_()
    logp_old = 0.1 * torch.randn(4, 6, generator=g)
    adv_seq = torch.randn(4, generator=g)
    mask = (torch.rand(4, 6, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    loss, _ = gspo_loss(logp, logp_old, adv_seq[:, None] * mask, mask, clip_low=10.0, clip_high=10.0)
    (grad,) = torch.autograd.grad(loss, logp)
    logp2 = logp.detach().clone().requires_grad_()
    s = torch.exp(((logp2 - logp_old) * mask).sum(-1) / mask.sum(-1))
    ref = -(adv_seq * s).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    assert logp2.grad is not None
    torch.testing.assert_close(grad, logp2.grad)


# ------------------------------------------------------------------------------------------------ TIS


def test_truncated_is_weights() -> None:
    # exp(logp_old - logp_behaviour) = (3, 0.5, 1, 0.1) -> clamp [0.2, 2] -> (2, 0.5, 1, 0.2); last masked -> 0
    logp_old = torch.tensor([[math.log(3.0), math.log(0.5), 0.0, math.log(0.1)]], requires_grad=True)
    w = truncated_is_weights(logp_old, torch.zeros(1, 4), torch.tensor([[1.0, 1.0, 1.0, 0.0]]), cap=2.0, floor=0.2)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 1.0, 0.0]]))
    assert not w.requires_grad
    with pytest.raises(ValueError):
        truncated_is_weights(logp_old, torch.zeros(1, 4), ONES, cap=1.0, floor=2.0)
    with pytest.raises(ValueError):
        truncated_is_weights(logp_old, torch.zeros(1, 3), ONES, cap=2.0)


# ------------------------------------------------------------------------------------------------ value loss


def test_value_loss_hand_computed() -> None:
    # clip 0.2, mask (1, 1, 0):
    #  t0: V=1, V_old=0.5, R=0: (1-0)^2 = 1; V_clip = 0.7 -> 0.49; max 1 (unclipped)
    #  t1: V=2.5, V_old=2, R=3: (2.5-3)^2 = 0.25; V_clip = 2.2 -> 0.64; max 0.64 (clipped, zero grad)
    # loss = 0.5 * (1 + 0.64) / 2 = 0.41; grad t0 = 0.5 * (1/2) * 2 (V - R) = 0.5
    values = torch.tensor([[1.0, 2.5, 0.0]], requires_grad=True)
    values_old = torch.tensor([[0.5, 2.0, 0.0]])
    returns = torch.tensor([[0.0, 3.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, metrics = value_loss(values, values_old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.41)
    assert metrics["clip_frac"].item() == pytest.approx(0.5)
    assert metrics["value_mean"].item() == pytest.approx(1.75)
    loss.backward()
    assert values.grad is not None
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0, 0.0]]))
    # unclipped: 0.5 * (1 + 0.25) / 2 = 0.3125
    loss, metrics = value_loss(values, values_old, returns, mask, clip=None)
    assert loss.item() == pytest.approx(0.3125)
    assert metrics["clip_frac"].item() == 0.0
    with pytest.raises(ValueError):
        value_loss(values, values_old[:, :2], returns, mask, clip=0.2)


# ------------------------------------------------------------------------------------------------ logits


def test_entropy_from_logits() -> None:
    # uniform over 4: ln 4 = 1.386294; p = (0.5, 0.25, 0.25): 0.5 ln2 + 0.5 ln4 = 1.039721; one-hot via -inf: 0
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [math.log(0.5), math.log(0.25), math.log(0.25), -math.inf], [0.0, -math.inf] * 2]],
        requires_grad=True,
    )
    h = entropy_from_logits(logits)
    torch.testing.assert_close(h, torch.tensor([[1.386294, 1.039721, math.log(2.0)]]))
    h.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    one_hot = torch.tensor([[[3.0, -math.inf]]], requires_grad=True)
    h1 = entropy_from_logits(one_hot)
    h1.sum().backward()
    assert h1.item() == 0.0
    assert one_hot.grad is not None and torch.isfinite(one_hot.grad).all()


def test_entropy_matches_categorical() -> None:
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(2))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    assert entropy_from_logits(logits.to(torch.bfloat16)).dtype == torch.float32


def test_logp_from_logits() -> None:
    # uniform over 4 -> ln(1/4) = -1.386294 for any token
    out = logp_from_logits(torch.zeros(1, 2, 4), torch.tensor([[2, 0]]))
    torch.testing.assert_close(out, torch.full((1, 2), -1.386294))
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(3))
    tokens = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(4))
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(logp_from_logits(logits, tokens), expected)
    with pytest.raises(ValueError):
        logp_from_logits(logits, tokens[:, :2])


# ------------------------------------------------------------------------------------------------ registry


def test_policy_loss_fns_share_keyword_interface() -> None:
    assert set(POLICY_LOSS_FNS) == {"ppo", "cispo", "gspo"}
    logp = _logp(*RATIOS)
    for name, fn in POLICY_LOSS_FNS.items():
        loss, metrics = fn(
            logp, LOGP_OLD, ADV, ONES, clip_low=0.2, clip_high=0.28, agg="prompt-level",
            is_weights=ONES, norm_len=None, group_ids=torch.tensor([0]), global_count=None,
        )  # fmt: skip
        assert loss.dim() == 0, name
        assert {"clip_frac", "approx_kl", "ratio_mean"} <= set(metrics), name
