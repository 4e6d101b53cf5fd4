"""The PolicyLearner under FSDP2 on real gloo process groups: 2 ranks (and 4, marked slow), each with its
token-balanced part of the batch (`balance.split_batch`, as the driver splits it), take the same steps as the
one-process learner on the whole batch (losses, norms and updated weights within 1e-5, fp32) for GRPO, PPO with a
critic, a KL reference (a frozen sharded model) and LoRA (+ KL to the adapter-disabled base). The sharded checkpoint
written between the two steps resumes on 2 ranks and on 1 (the plain learner) to the same second step, and
`rlplat eval --checkpoint` serves it: gathered in one process (LoRA merged), its weights are those after step 1.
Removing the global loss count makes it fail (checked).

Ranks are forked from the test process (see test_fsdp.py for why); a rank that hangs fails the test.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from rlplat.algos.advantages import grpo_advantages
from rlplat.config import AlgorithmConfig, GaeConfig, LearnerConfig, LoraConfig
from rlplat.learners.balance import split_batch
from rlplat.learners.policy import PolicyLearner
from rlplat.learners.ranks import Ranks, init_learner_group
from rlplat.learners.state import load_learner_state, save_learner_state
from rlplat.types import FinishReason, Sample, TrainBatch
from tests.unit.learners.test_fsdp import _run_ranks

ATOL = 1e-5
LORA = LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"))
VARIANTS = {
    "grpo": (AlgorithmConfig(), None),
    "ppo-critic": (AlgorithmConfig(advantage="gae", gae=GaeConfig()), None),
    "kl-reference": (AlgorithmConfig(kl_coef=0.5, kl_kind="k3"), None),
    "lora-kl": (AlgorithmConfig(kl_coef=0.5), LORA),
}
# micro-batches of <= 40 padded tokens: several per rank, unequal counts (blank passes); clipping active
LEARNER = {"lr": 1e-3, "micro_batch_size_in_tokens": 40, "grad_clip_norm": 0.1}
METRICS = ("loss/policy", "train/grad_norm", "train/entropy", "loss/kl_ref", "loss/value", "critic/grad_norm",
           "critic/return_mean", "train/logp_old_vs_behaviour")


def _batch(with_advantages: bool) -> TrainBatch:
    """3 groups x 4 samples of random tokens, lengths 7..14, behaviour log-probs -2 (version 0: fresh)."""
    rng = random.Random(3)
    samples = []
    for g in range(3):
        prompt = [rng.randrange(3, 60) for _ in range(3 + g)]
        for i in range(4):
            resp = [rng.randrange(3, 60) for _ in range(2 + (i * 3 + g) % 7)] + [1]
            s = Sample(group_id=g, sample_index=i, prompt_id=g, prompt_token_ids=prompt)
            s.extend(resp, [-2.0] * len(resp), 0, FinishReason.STOP)
            s.reward = float((i * 7 + g) % 3) / 2
            samples.append(s)
    adv = grpo_advantages(torch.tensor([s.reward for s in samples]), torch.tensor([s.group_id for s in samples]))
    return TrainBatch(samples=samples, advantages=adv.tolist() if with_advantages else None)


def _learner(model_dir: Path, variant: str, ranks: Ranks) -> PolicyLearner:
    algo, lora = VARIANTS[variant]
    return PolicyLearner(str(model_dir), LearnerConfig(**LEARNER), algo, dtype="float32", seed=0, lora=lora,
                         ranks=ranks)


def _part(variant: str, ranks: Ranks) -> TrainBatch:
    batch = _batch(with_advantages=variant != "ppo-critic")
    return batch if ranks.world_size == 1 else split_batch(batch, ranks.world_size)[0][ranks.rank]


def _step(learner: PolicyLearner, variant: str) -> dict[str, Any]:
    metrics = learner.train_step(_part(variant, learner.ranks))
    return {"metrics": metrics, "weights": {k: v.clone() for k, v in learner.engine_state_dict().items()}}


def _rank_worker(rank: int, world: int, port: int, model_dir: Path, out: Path, variant: str, resume: bool) -> None:
    torch.set_num_threads(1)
    ranks = init_learner_group("gloo", "127.0.0.1", port, rank, world, timeout_s=120)
    learner = _learner(model_dir, variant, ranks)
    res: dict[str, Any] = {}
    if resume:
        load_learner_state(learner, out / "ckpt")
        res["step2"] = _step(learner, variant)
    else:
        res["step1"] = _step(learner, variant)
        save_learner_state(learner, out / "ckpt")
        res["step2"] = _step(learner, variant)
    res["version"] = learner.policy_version
    torch.save(res, out / f"{'resumed' if resume else 'rank'}{rank}.pt")
    dist.destroy_process_group()


def _assert_step(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in METRICS:
        assert (key in got["metrics"]) == (key in want["metrics"]), key
        if key in want["metrics"]:
            assert got["metrics"][key] == pytest.approx(want["metrics"][key], abs=ATOL), key
    assert list(got["weights"]) == list(want["weights"])
    for k, v in want["weights"].items():
        torch.testing.assert_close(got["weights"][k], v, rtol=0, atol=ATOL, msg=k)


@pytest.mark.parametrize(("variant", "world"), [
    *((v, 2) for v in VARIANTS),
    pytest.param("grpo", 4, marks=pytest.mark.slow, id="grpo-4-ranks"),  # 12 samples over 4 ranks, 4 -> 1 resume
])
def test_ranks_match_one_process_and_resume(tiny_model_dir: Path, tmp_path: Path, variant: str, world: int) -> None:
    plain = _learner(tiny_model_dir, variant, Ranks())
    want = [_step(plain, variant) for _ in range(2)]
    assert want[0]["metrics"]["train/grad_norm"] > LEARNER["grad_clip_norm"]  # the global norm matters

    _run_ranks(_rank_worker, world, tiny_model_dir, tmp_path, variant, False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for res in ranks:  # every rank reports the reduced metrics and receives the full weights
        _assert_step(res["step1"], want[0])
        _assert_step(res["step2"], want[1])
    assert (tmp_path / "ckpt" / "policy" / ".metadata").is_file()
    assert (tmp_path / "ckpt" / "critic").is_dir() == (variant == "ppo-critic")

    if variant in ("grpo", "ppo-critic") and world == 2:  # 2 -> 2 ranks: the same second step as the uninterrupted run
        _run_ranks(_rank_worker, 2, tiny_model_dir, tmp_path, variant, True)
        resumed = torch.load(tmp_path / "resumed0.pt")
        assert resumed["version"] == 2
        _assert_step(resumed["step2"], want[1])

    if variant in ("grpo", "lora-kl") and world == 2:
        _assert_eval_serves(tiny_model_dir, tmp_path, variant, want[0]["weights"])

    one = _learner(tiny_model_dir, variant, Ranks())  # N -> 1: the plain learner loads the shards (DCP reshards)
    load_learner_state(one, tmp_path / "ckpt")
    assert one.policy_version == 1
    _assert_step(_step(one, variant), want[1])


def _assert_eval_serves(model_dir: Path, tmp_path: Path, variant: str, want: dict[str, torch.Tensor]) -> None:
    """`rlplat eval`'s model directory of the sharded checkpoint (a checkpoint folder whose learner/ is `ckpt`)."""
    from safetensors.torch import load_file

    from rlplat.config import load_config
    from rlplat.evaluate import EvalSource, materialise
    from tests.conftest import ROOT

    source = tmp_path / "step_000001"
    source.mkdir()
    (source / "learner").symlink_to(tmp_path / "ckpt")
    lora = VARIANTS[variant][1]
    overrides = [f"model.path={model_dir}"] + ([] if lora is None else [
        f"model.lora={{rank: {lora.rank}, alpha: {lora.alpha}, target_modules: [{', '.join(lora.target_modules)}]}}"])
    out = materialise(EvalSource("checkpoint", source, 1, ""), load_config(ROOT / "configs/demo.yaml", overrides),
                      tmp_path / "served")
    served = load_file(str(out / "model.safetensors"))
    assert set(want) <= set(served)
    for k, v in want.items():
        torch.testing.assert_close(served[k], v, rtol=0, atol=ATOL, msg=k)
