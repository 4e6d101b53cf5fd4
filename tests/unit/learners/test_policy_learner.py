"""PolicyLearner on the tiny model without Ray: off-policy handling, gradient accumulation, the GAE critic path,
LoRA merged weights, and ReMix's frozen policies."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlplat.algos.advantages import grpo_advantages
from rlplat.config import AlgorithmConfig, GaeConfig, KlConvexConfig, LearnerConfig, LoraConfig, RemixConfig
from rlplat.learners.microbatch import make_micro_batches
from rlplat.learners.policy import BASE, PolicyLearner, snapshot, stale_token_mask, swapped
from rlplat.types import FinishReason, Sample, TrainBatch


def _learner(model_dir: Path, algo: AlgorithmConfig | None = None, **kw: object) -> PolicyLearner:
    cfg = LearnerConfig(**{"lr": 1e-2, **kw.pop("learner", {})})  # type: ignore[arg-type]
    return PolicyLearner(str(model_dir), cfg, algo or AlgorithmConfig(), dtype="float32", seed=0, **kw)  # type: ignore


def _samples(learner: PolicyLearner, *, version: int = 0, groups: int = 2, size: int = 4, logp_shift: float = 0.0,
             first_group: int = 0) -> list[Sample]:
    """Random responses whose behaviour log-probs are the learner's own (+ logp_shift)."""
    rng = random.Random(first_group)
    out = []
    for g in range(first_group, first_group + groups):
        prompt = [rng.randrange(2, 60) for _ in range(4 + g % 3)]
        for i in range(size):
            resp = [rng.randrange(2, 60) for _ in range(2 + i)] + [1]
            logps = learner.sequence_logps(prompt + resp)[len(prompt) - 1 :]
            s = Sample(group_id=g, sample_index=i, prompt_id=g, prompt_token_ids=prompt)
            s.extend(resp, [x + logp_shift for x in logps], version, FinishReason.STOP)
            s.reward = float((i + g) % 2)
            out.append(s)
    return out


def _batch(samples: list[Sample], *, with_advantages: bool = True) -> TrainBatch:
    rewards = torch.tensor([s.reward for s in samples])
    adv = grpo_advantages(rewards, torch.tensor([s.group_id for s in samples])).tolist()
    return TrainBatch(samples=samples, advantages=adv if with_advantages else None)


def _params(learner: PolicyLearner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters()}


# ------------------------------------------------------------------------------------------------ off-policy tokens
def test_stale_token_mask_by_hand() -> None:
    versions = torch.tensor([[-1, 2, 3, 3], [-1, -1, 1, 3]])
    mask = torch.tensor([[0.0, 1, 1, 0], [0, 0, 1, 1]])
    assert stale_token_mask(versions, mask, 3).tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]


def test_off_policy_token_fraction(tiny_model_dir: Path) -> None:
    learner = _learner(tiny_model_dir)
    stale = _samples(learner, version=-1, groups=1)  # older than the learner's version 0
    fresh = _samples(learner, version=0, groups=1, first_group=1)
    n_stale, n_fresh = (sum(s.num_response_tokens for s in x) for x in (stale, fresh))
    m = learner.train_step(_batch(stale + fresh))
    assert m["train/off_policy_token_frac"] == pytest.approx(n_stale / (n_stale + n_fresh))
    assert m["train/logp_old_vs_behaviour"] < 1e-5  # behaviour log-probs are the learner's own


def test_mask_mode_trains_on_fresh_tokens_only(tiny_model_dir: Path) -> None:
    learner = _learner(tiny_model_dir, AlgorithmConfig(off_policy="mask"))
    before = _params(learner)
    m = learner.train_step(_batch(_samples(learner, version=-1)))
    assert m["train/grad_norm"] == 0.0 and m["loss/policy"] == 0.0
    assert all(torch.equal(before[n], p) for n, p in learner.model.named_parameters())
    m = learner.train_step(_batch(_samples(learner, version=1)))  # the learner is at version 1 now: fresh
    assert m["train/grad_norm"] > 0


def test_tis_weights_are_truncated_importance_ratios(tiny_model_dir: Path) -> None:
    learner = _learner(tiny_model_dir, AlgorithmConfig(off_policy="tis", tis_cap=2.0))
    # Behaviour log-probs log(4) below the learner's: w = min(exp(log 4), 2) = 2 on every token.
    m = learner.train_step(_batch(_samples(learner, logp_shift=-1.3862944)))
    assert m["train/tis_weight_mean"] == pytest.approx(2.0, abs=1e-5)
    learner = _learner(tiny_model_dir, AlgorithmConfig(off_policy="tis", tis_cap=2.0))
    m = learner.train_step(_batch(_samples(learner, logp_shift=0.5)))  # w = exp(-0.5)
    assert m["train/tis_weight_mean"] == pytest.approx(0.6065307, abs=1e-5)


# ------------------------------------------------------------------------------------------------ mechanics
def test_right_padded_rows_need_no_attention_mask(tiny_model_dir: Path) -> None:
    learner = _learner(tiny_model_dir)
    samples = _samples(learner, groups=1)
    (mb,) = make_micro_batches(samples, None, token_budget=10_000)
    with torch.no_grad():
        logp = learner._logp(mb)
    for row, i in enumerate(mb.index.tolist()):
        s = samples[i]
        alone = learner.sequence_logps(s.prompt_token_ids + s.response_token_ids)
        torch.testing.assert_close(logp[row, : len(alone)], torch.tensor(alone), atol=1e-5, rtol=0)


def test_gradient_accumulation_does_not_depend_on_the_token_budget(tiny_model_dir: Path) -> None:
    results = []
    for budget in (10_000, 12):  # one micro-batch, or one row per micro-batch
        learner = _learner(tiny_model_dir, learner={"micro_batch_size_in_tokens": budget})
        m = learner.train_step(_batch(_samples(learner)))
        grads = {n: p.grad.clone() for n, p in learner.params.items() if p.grad is not None}  # kept after the step
        results.append((m["loss/policy"], m["train/grad_norm"], grads))
    (loss_a, norm_a, ga), (loss_b, norm_b, gb) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6) and norm_a == pytest.approx(norm_b, rel=1e-5)
    assert set(ga) == set(gb) and len(ga) > 0
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-7, rtol=1e-4)


def test_attn_implementation_reaches_the_model_and_gives_the_same_step(tiny_model_dir: Path) -> None:
    results = []
    for impl in ("sdpa", "eager"):
        learner = _learner(tiny_model_dir, learner={"attn_implementation": impl})
        assert learner.model.config._attn_implementation == impl
        m = learner.train_step(_batch(_samples(learner)))
        results.append((m["loss/policy"], m["train/grad_norm"]))
    assert results[0] == pytest.approx(results[1], rel=1e-5)


def test_num_updates_split_the_batch_into_optimizer_steps(tiny_model_dir: Path) -> None:
    learner = _learner(tiny_model_dir, AlgorithmConfig(num_updates_per_batch=2))
    m = learner.train_step(_batch(_samples(learner, groups=4)))
    assert m["train/num_updates"] == 2.0
    assert learner.optimizer.state[next(iter(learner.params.values()))]["step"] == 2


def test_swapped_restores_the_live_parameters(tiny_model_dir: Path) -> None:
    learner = _learner(tiny_model_dir)
    live = _params(learner)
    frozen = {n: torch.zeros_like(p) for n, p in learner.params.items()}
    with swapped(learner.params, frozen):
        assert all(float(p.detach().abs().sum()) == 0 for p in learner.params.values())
    assert all(torch.equal(live[n], p) for n, p in learner.model.named_parameters())


# ------------------------------------------------------------------------------------------------ PPO critic
def test_gae_learner_computes_advantages_and_trains_the_critic(tiny_model_dir: Path) -> None:
    # gamma = lam = 1 and V = 0 at the start: every response token's return is the outcome reward.
    learner = _learner(tiny_model_dir, AlgorithmConfig(advantage="gae", gae=GaeConfig(lam=1.0, critic_lr=1e-2)))
    assert learner.critic is not None
    head = learner.critic.model.score.weight
    assert float(head.detach().abs().sum()) == 0.0  # zero-initialised head: V = 0 at the start
    samples = _samples(learner)
    with pytest.raises(ValueError, match="advantages"):
        learner.train_step(_batch(samples))
    policy_before, critic_before = _params(learner), copy.deepcopy(learner.critic.model.state_dict())
    m = learner.train_step(_batch(samples, with_advantages=False))
    assert m["critic/value_old_mean"] == 0.0 and m["loss/value"] > 0
    assert m["critic/return_mean"] == pytest.approx(sum(s.reward * s.num_response_tokens for s in samples)
                                                    / sum(s.num_response_tokens for s in samples), abs=1e-5)
    assert float(head.detach().abs().sum()) > 0
    changed = [k for k, v in learner.critic.model.state_dict().items() if not torch.equal(v, critic_before[k])]
    assert set(changed) == {"score.weight", "score.bias"}  # a zero head passes no gradient to the backbone yet
    learner.train_step(_batch(_samples(learner, version=1), with_advantages=False))
    changed = [k for k, v in learner.critic.model.state_dict().items() if not torch.equal(v, critic_before[k])]
    assert len(changed) > len(critic_before) // 2
    assert any(not torch.equal(policy_before[n], p) for n, p in learner.model.named_parameters())


def test_gae_with_in_reward_kl_uses_the_reference(tiny_model_dir: Path) -> None:
    algo = AlgorithmConfig(advantage="gae", gae=GaeConfig(kl_in_reward_coef=0.1))
    learner = _learner(tiny_model_dir, algo)
    assert learner.ref is not None
    m = learner.train_step(_batch(_samples(learner), with_advantages=False))
    assert m["train/kl_in_reward"] == 0.0  # pi_old == pi_ref at the first step
    m = learner.train_step(_batch(_samples(learner, version=1), with_advantages=False))
    assert m["train/kl_in_reward"] != 0.0


# ------------------------------------------------------------------------------------------------ LoRA
def test_lora_engine_state_dict_has_base_names_and_merged_weights(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    learner = _learner(tiny_model_dir, AlgorithmConfig(kl_coef=0.1), lora=LoraConfig(rank=4, alpha=8))
    assert learner.ref == BASE  # the adapter-disabled base, no snapshot
    assert all("lora_" in n for n in learner.params)
    base = load_file(tiny_model_dir / "model.safetensors")
    sd = learner.engine_state_dict()
    assert set(sd) == set(base) - {"lm_head.weight"}
    assert all(torch.equal(sd[k], base[k]) for k in sd)  # B = 0: merged == base before training

    learner.train_step(_batch(_samples(learner)))
    sd = learner.engine_state_dict()
    merged = copy.deepcopy(learner.model).merge_and_unload().state_dict()
    for k in sd:
        torch.testing.assert_close(sd[k], merged[k], atol=1e-6, rtol=0)
    changed = {k for k in sd if not torch.equal(sd[k], base[k])}
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj")) for k in changed)
    # Only the adapters trained: every base tensor inside the peft model is still the checkpoint's.
    for name, p in learner.model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(p.detach(), base[name.replace(".base_layer.", ".")]), name
    # The engine sees the merged policy: its log-probs are the learner's.
    engine = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    engine.load_state_dict(sd, strict=False)
    engine.tie_weights()
    ids = torch.tensor([[5, 9, 12, 20, 7, 1]])
    with torch.no_grad():
        logits = engine(input_ids=ids).logits[0, :-1]
    torch.testing.assert_close(torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0],
                               torch.tensor(learner.sequence_logps(ids[0].tolist())), atol=1e-5, rtol=0)


def test_lora_save_writes_only_the_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    learner = _learner(tiny_model_dir, lora=LoraConfig(rank=4))
    learner.train_step(_batch(_samples(learner)))
    learner.save(str(tmp_path / "out"))
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files


# ------------------------------------------------------------------------------------------------ ReMix
def _remix(**kw: object) -> AlgorithmConfig:
    return AlgorithmConfig(remix=RemixConfig(enabled=True, **kw))  # type: ignore[arg-type]


def test_remix_ratio_is_to_the_behaviour_policy_on_stale_tokens(tiny_model_dir: Path) -> None:
    learner = _learner(tiny_model_dir, _remix())
    # Stale tokens whose behaviour log-prob is 0.1 below pi_k: the clip window is centred on exp(0.1).
    stale = learner.train_step(_batch(_samples(learner, version=-1, logp_shift=-0.1)))
    assert stale["train/off_policy_token_frac"] == 1.0 and stale["train/num_updates"] == 2.0
    learner = _learner(tiny_model_dir, _remix())
    fresh = learner.train_step(_batch(_samples(learner, version=0, logp_shift=-0.1)))
    assert fresh["train/off_policy_token_frac"] == 0.0
    # Update 1 sees centre exp(0.1) exactly (stale) or 1 exactly (fresh: plain PPO against pi_k); the metric is the
    # mean over the two updates, and pi_theta does not enter the centre.
    assert stale["remix/clip_centre_mean"] == pytest.approx(1.1051709, abs=1e-5)
    assert fresh["remix/clip_centre_mean"] == pytest.approx(1.0, abs=1e-6)


def test_remix_keeps_the_previous_policy_and_reincarnates(tiny_model_dir: Path) -> None:
    algo = _remix(update_to_data=1, reincarnation_step=2, kl_convex=KlConvexConfig(coef=0.1))
    learner = _learner(tiny_model_dir, algo)
    initial = snapshot(learner.params)
    assert learner.prev is not None and isinstance(learner.ref, dict)
    m1 = learner.train_step(_batch(_samples(learner)))
    assert m1["loss/kl_convex"] == pytest.approx(0.0, abs=1e-6)  # pi_theta starts at pi_base == pi_prev
    assert all(torch.equal(learner.prev[n], initial[n]) for n in initial)  # pi_prev of step 2 is pi_0
    after_1 = snapshot(learner.params)
    m2 = learner.train_step(_batch(_samples(learner, version=1)))
    assert m2["loss/kl_convex"] > 0
    assert all(torch.equal(learner.prev[n], after_1[n]) for n in after_1)
    # Reincarnation at T = 2: the KL base is now pi_2, the weights after step 2.
    assert isinstance(learner.ref, dict)
    assert all(torch.equal(learner.ref[n], p.detach()) for n, p in learner.params.items())
    assert not all(torch.equal(learner.ref[n], initial[n]) for n in initial)


@pytest.mark.parametrize(("base_after", "expected"), [(True, [2.0, 1.0]), (False, [2.0, 2.0])])
def test_remix_update_count_after_reincarnation(tiny_model_dir: Path, base_after: bool, expected: list[float]) -> None:
    learner = _learner(tiny_model_dir, _remix(update_to_data=2, reincarnation_step=1,
                                              base_updates_after_reincarnation=base_after))
    counts = [learner.train_step(_batch(_samples(learner, version=v)))["train/num_updates"] for v in (0, 1)]
    assert counts == expected


def test_remix_lora_reincarnation_replaces_the_disabled_adapter_base(tiny_model_dir: Path) -> None:
    learner = _learner(tiny_model_dir, _remix(reincarnation_step=1), lora=LoraConfig(rank=4))
    assert learner.ref == BASE
    learner.train_step(_batch(_samples(learner)))
    assert isinstance(learner.ref, dict) and set(learner.ref) == set(learner.params)


def test_kl_convex_lambda_follows_the_spec_schedule(tiny_model_dir: Path) -> None:
    kc = KlConvexConfig(lambda_start=2, lambda_interval=1, lambda_decrement=0.25, lambda_floor=0.5)
    learner = _learner(tiny_model_dir, _remix(kl_convex=kc))
    assert [learner.kl_convex_lambda(t) for t in (1, 2, 3, 4, 5)] == [1.0, 1.0, 0.75, 0.5, 0.5]
    kc = KlConvexConfig(lambda_start=1, lambda_interval=1, restart_at_reincarnation=True)
    learner = _learner(tiny_model_dir, _remix(kl_convex=kc, reincarnation_step=3))
    assert [learner.kl_convex_lambda(t) for t in (2, 3, 4, 5)] == [0.9, 0.8, 1.0, 0.9]


def test_single_pass_equals_a_separate_old_logp_recompute(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for single in (True, False):
        monkeypatch.setattr(PolicyLearner, "single_pass", property(lambda self, s=single: s))
        learner = _learner(tiny_model_dir, AlgorithmConfig(off_policy="tis"))
        samples = _samples(learner, logp_shift=-0.2)
        samples[0].policy_versions = [-1] * samples[0].num_response_tokens
        m = learner.train_step(_batch(samples))
        results.append((m, {n: p.grad.clone() for n, p in learner.params.items() if p.grad is not None}))
    (ma, ga), (mb, gb) = results
    for key in ("loss/policy", "train/tis_weight_mean", "train/off_policy_token_frac", "train/logp_old_vs_behaviour"):
        assert ma[key] == pytest.approx(mb[key], abs=1e-6), key
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-7, rtol=1e-5)
