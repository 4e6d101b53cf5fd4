"""APRIL end to end with the real vLLM engine on CPU.

One RolloutActor (module fixture) serves the step-by-step checks: a group aborted mid-generation is finished next
step from its token ids, with behaviour log-probs equal to what the engine scores for them (old weights for the
prefix, new weights for the continuation), two policy versions per continued sample, whole groups and a balanced
token ledger. The last test runs `loop.train` with two rollout workers and APRIL on, and reads the metrics
back from MLflow. A tiny random model rarely emits EOS, so responses run to their budget.
"""

from __future__ import annotations

import asyncio

import pytest

from rlplat.models import TinyModelShape, write_tiny_model
from rlplat.types import Group, Sample, SamplingOptions
from tests.conftest import ROOT, assert_logps_close, smoke_overrides, started_rollout_actor

pytestmark = pytest.mark.slow

G = 4
CONTEXT = 512
SHORT, LONG = 8, 300  # the short group completes the step; the long one is aborted mid-generation


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    shape = TinyModelShape(max_position_embeddings=CONTEXT)
    return write_tiny_model(tmp_path_factory.mktemp("april") / "tiny", shape=shape)


@pytest.fixture(scope="module")
def actor(ray_session, model_dir):
    with started_rollout_actor(ray_session, model_dir, CONTEXT) as handle:
        yield handle


def _group(gid: int, prompt: list[int]) -> Group:
    samples = [Sample(group_id=gid, sample_index=i, prompt_id=gid, prompt_token_ids=list(prompt)) for i in range(G)]
    return Group(group_id=gid, prompt_id=gid, samples=samples)


def _perturbed_weights(model_dir, scale: float = 0.2) -> bytes:
    import torch
    from safetensors.torch import load_file

    from rlplat.weights import state_dict_to_bytes

    gen = torch.Generator().manual_seed(7)
    sd = load_file(str(model_dir / "model.safetensors"))
    sd.pop("lm_head.weight", None)
    return state_dict_to_bytes({k: v + scale * torch.randn(v.shape, generator=gen) for k, v in sd.items()})


def _engine_logps(ray, handle, sample: Sample) -> list[float]:
    """The engine's log-prob of each response token of `sample` given everything before it (current weights)."""
    scored = ray.get(handle.score.remote(sample.prompt_token_ids + sample.response_token_ids))
    return scored[len(sample.prompt_token_ids) - 1 :]


def _check_whole_and_balanced(step, mgr) -> None:
    for g in step.groups + mgr.buffer.groups:
        assert [s.sample_index for s in g.samples] == list(range(G))
        assert {s.group_id for s in g.samples} == {g.group_id}
        g.validate()
    assert not {g.group_id for g in step.groups} & {g.group_id for g in mgr.buffer.groups}
    m = step.metrics
    accounted = m["april/tokens_trained"] + m["april/tokens_buffered"] + m["april/tokens_dropped"]
    assert m["april/tokens_generated"] == accounted
    mgr.ledger.check()


def test_aborted_group_continues_next_step_across_a_weight_sync(ray_session, actor, model_dir) -> None:
    from rlplat.driver.workers import RemoteEngine
    from rlplat.rollout.april_manager import AprilManager

    mgr = AprilManager([RemoteEngine(actor, 600.0)], over_provision=2.0)
    groups = iter([[_group(1, [10, 11, 12, 13, 14]), _group(2, [20, 21, 22])]])
    fresh = lambda k: next(groups, [])[:k]  # noqa: E731
    budget = lambda g: SHORT if g.group_id == 1 else LONG  # noqa: E731
    sampling = SamplingOptions(max_new_tokens=LONG, temperature=1.0)

    # Step 1 (policy version 0): group 1 completes, group 2 is aborted mid-generation and buffered whole.
    step1 = asyncio.run(mgr.collect(1, fresh, sampling, 0, budget_for=budget))
    assert [g.group_id for g in step1.groups] == [1] and step1.groups[0].is_complete
    (partial,) = mgr.buffer.groups
    assert partial.group_id == 2 and not partial.is_complete
    assert step1.metrics["april/num_groups_interrupted"] == 1 and step1.metrics["april/num_requests_aborted"] >= 1
    assert 0 < partial.num_response_tokens < G * LONG
    _check_whole_and_balanced(step1, mgr)
    prefix = {s.sample_index: (list(s.response_token_ids), list(s.logp_behaviour)) for s in partial.samples}
    for s in partial.samples:  # the aborted prefix carries the engine's log-probs under version 0
        assert s.policy_versions == [0] * s.num_response_tokens
        assert_logps_close(s.logp_behaviour, _engine_logps(ray_session, actor, s))
    saved = mgr.state()

    # Weight sync: version 1 differs from version 0.
    ray_session.get(actor.load_weights.remote(_perturbed_weights(model_dir)))

    # Step 2 (version 1): no fresh prompts, so the buffered group must finish, continuing from its token ids.
    step2 = asyncio.run(mgr.collect(1, fresh, sampling, 1, budget_for=budget))
    (done,) = step2.groups
    assert done.group_id == 2 and done.is_complete and len(mgr.buffer) == 0
    _check_whole_and_balanced(step2, mgr)
    assert step2.metrics["april/tokens_trained"] == step2.metrics["april/tokens_generated"]
    assert 0 < step2.metrics["rollout/off_policy_token_fraction"] < 1
    multi = 0
    for s in done.samples:
        ids0, logps0 = prefix[s.sample_index]
        n0 = len(ids0)
        assert s.response_token_ids[:n0] == ids0 and s.logp_behaviour[:n0] == logps0
        assert s.num_response_tokens == LONG or s.finish_reason.value == "stop"
        assert s.policy_versions == [0] * n0 + [1] * (s.num_response_tokens - n0)
        multi += 0 < n0 < s.num_response_tokens
        now = _engine_logps(ray_session, actor, s)  # under version 1
        assert_logps_close(s.logp_behaviour[n0:], now[n0:])  # continuation: new weights
        if n0:
            assert max(abs(a - b) for a, b in zip(logps0, now[:n0], strict=True)) > 1e-2  # prefix: old weights
    assert multi >= 1 and step2.metrics["april/num_samples_multi_version"] == multi
    assert saved[0].samples[0].response_token_ids == prefix[0][0]  # the checkpointed buffer is a snapshot


def test_ignore_eos_samples_every_response_to_its_budget(ray_session, actor) -> None:
    """rollout.ignore_eos: with EOS ignored nothing stops early; the same prompt without it does stop (a random
    model over the ~64-token char vocabulary meets EOS within 200 tokens in most of 16 samples)."""
    budget = 200
    fresh = lambda gid: [Sample(group_id=gid, sample_index=i, prompt_id=gid, prompt_token_ids=[10, 11, 12])  # noqa: E731
                         for i in range(16)]
    plain = ray_session.get(actor.generate.remote(fresh(5), SamplingOptions(max_new_tokens=budget), 0))
    fixed = ray_session.get(actor.generate.remote(fresh(6), SamplingOptions(max_new_tokens=budget, ignore_eos=True), 0))
    assert [s.num_response_tokens for s in fixed] == [budget] * 16
    assert {s.finish_reason.value for s in fixed} == {"length"}
    assert all(len(s.logp_behaviour) == len(s.policy_versions) == budget for s in fixed)
    assert any(s.finish_reason.value == "stop" for s in plain)  # not vacuous: EOS is reachable


def test_reproducible_sampling_repeats_a_group_token_for_token(ray_session, actor) -> None:
    """rollout.reproducible_sampling: per-request seeds from (seed, group, sample, progress). The same group
    sampled twice gets the same tokens; its samples differ from each other, and another run seed changes them."""
    def sampled(seed: int) -> list[list[int]]:
        group = _group(7, [10, 11, 12])
        out = ray_session.get(actor.generate.remote(group.samples, SamplingOptions(max_new_tokens=40, seed=seed), 0))
        return [s.response_token_ids for s in out]

    first, again, other_seed = sampled(0), sampled(0), sampled(1)
    assert first == again
    assert len({tuple(t) for t in first}) == G  # each sample draws its own tokens
    assert first != other_seed


def test_two_rollout_workers_train_with_april(ray_session, model_dir, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from rlplat.config import load_config
    from rlplat.driver.loop import train

    overrides = smoke_overrides(model_dir, tmp_path / "out", **{
        "rollout.num_workers": 2, "rollout.partial.enabled": "true", "rollout.partial.over_provision": 2.0,
        "rollout.max_new_tokens": 64, "experiment.num_steps": 3, "data.num_eval_prompts": 4,
        "rollout.stream_interval": 8})  # multi-token updates, aborted mid-interval: the ledger must still balance
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", overrides)
    result = train(cfg, progress=False)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    history = {k: [m.value for m in sorted(client.get_metric_history(result.run_id, k), key=lambda m: m.step)]
               for k in ("april/tokens_generated", "april/tokens_trained", "april/tokens_buffered",
                         "april/tokens_dropped", "april/groups_buffered", "april/num_requests_aborted",
                         "rollout/off_policy_token_fraction")}
    assert all(len(v) == 3 for v in history.values()), history
    for gen, trained, buffered, dropped in zip(*(history[f"april/tokens_{k}"] for k in
                                                 ("generated", "trained", "buffered", "dropped")), strict=True):
        assert gen == trained + buffered + dropped
    assert history["april/tokens_trained"][-1] > 0
    assert history["april/tokens_trained"][-1] >= 3 * cfg.num_samples_per_step  # at least one token per sample
