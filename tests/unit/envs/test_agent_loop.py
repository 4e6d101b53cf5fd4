"""The agent loop with a fake async worker and real EnvPool CartPole pools (CPU, a few seconds, no Ray, no vLLM)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from rlplat.config import ConfigError, EnvConfig, load_config
from rlplat.envs.agent_loop import (
    EpisodeBatch,
    EpisodeBudget,
    EpisodeFormat,
    play_episodes,
)
from rlplat.envs.registry import make_episode_env
from rlplat.envs.text_env import EnvPoolTextEnv
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.registry import load_reward
from rlplat.types import FinishReason, Sample, SamplingOptions

EOS = 1
LOGP = -0.5
ROOT = Path(__file__).resolve().parents[3]


class CharCodec:
    """One token per character (its code point); EOS is id 1 and decodes to nothing."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids if i != EOS)


class FakeWorker:
    """Replies with `reply(context_text)` (+ EOS), cut at the request's budget; log-prob LOGP for every token."""

    def __init__(self, reply: Callable[[str], str], *, eos: bool = True) -> None:
        self.reply, self.eos = reply, eos
        self.calls: list[tuple[list[tuple[int, int]], int]] = []  # ([(group, sample)], max_new_tokens) per call

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        self.calls.append(([(s.group_id, s.sample_index) for s in samples], sampling.max_new_tokens))
        await asyncio.sleep(0)
        for s in samples:
            context = CharCodec().decode(s.prompt_token_ids + s.response_token_ids)
            ids = CharCodec().encode(self.reply(context)) + ([EOS] if self.eos else [])
            ids = ids[: sampling.max_new_tokens - s.num_response_tokens]
            s.extend(ids, [LOGP] * len(ids), policy_version, FinishReason.STOP)
        return samples


def _env(num_envs: int, *, renderer: str = "compact", penalty: float = -1.0) -> EnvPoolTextEnv:
    return make_episode_env(EnvConfig(task_id="CartPole-v1", renderer=renderer, invalid_action_penalty=penalty),
                            num_envs)


def _play(env: EnvPoolTextEnv, workers: list[FakeWorker], *, seeds: list[int], num_samples: int,
          budget: EpisodeBudget, fmt: EpisodeFormat | None = None, version: int = 3) -> EpisodeBatch:
    fmt = fmt or EpisodeFormat(prompt_template="{observation}", observation_template="|{observation}>")
    return asyncio.run(play_episodes(
        env, workers, CharCodec(), seeds=seeds, num_samples_per_seed=num_samples, first_group_id=100, budget=budget,
        fmt=fmt, sampling=SamplingOptions(max_new_tokens=999, temperature=1.0), policy_version=version))


def _budget(max_turns: int = 500, per_turn: int = 8, total: int = 100_000, context: int | None = None) -> EpisodeBudget:
    return EpisodeBudget(max_turns=max_turns, max_new_tokens_per_turn=per_turn, max_response_tokens=total,
                         max_context_tokens=context)


def _segments(sample: Sample) -> list[tuple[int, list[int]]]:
    """The response as runs of (mask, token ids)."""
    runs: list[tuple[int, list[int]]] = []
    for tok, m in zip(sample.response_token_ids, sample.loss_mask, strict=True):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(tok)
        else:
            runs.append((m, [tok]))
    return runs


def _lean(context: str) -> str:
    """Push towards where the pole falls: sign of (angle + angular velocity) in the last compact observation."""
    obs = context.rsplit("|", 1)[-1].rstrip(">")
    angle, velocity = int(obs[:2]), int(obs[2:4])
    return "r" if angle + velocity > 0 else "l"


# ------------------------------------------------------------------------------------------------ masks and budgets
def test_model_tokens_have_mask_1_and_env_tokens_mask_0() -> None:
    env = _env(4)
    batch = _play(env, [FakeWorker(_lean)], seeds=[0, 1], num_samples=2, budget=_budget(max_turns=6))
    env.close()
    for ep in batch.episodes:
        s = ep.sample
        s.validate()
        runs = _segments(s)
        model_runs = [ids for m, ids in runs if m == 1]
        env_runs = [ids for m, ids in runs if m == 0]
        assert runs[0][0] == 1 and runs[-1][0] == 1, "a response starts and ends with a model turn"
        assert len(model_runs) == ep.num_turns == 6 and len(env_runs) == 5
        for ids in model_runs:
            assert CharCodec().decode(ids) in ("l", "r") and ids[-1] == EOS
        for ids in env_runs:  # "|" + 4-character compact observation + ">"
            text = CharCodec().decode(ids)
            assert len(text) == 6 and text[0] == "|" and text[-1] == ">"
        for tok_logp, m in zip(s.logp_behaviour, s.loss_mask, strict=True):
            assert tok_logp == (LOGP if m else 0.0)
        assert set(s.policy_versions) == {3}
        assert s.finish_reason is FinishReason.LENGTH  # the lean policy outlives 6 turns
    assert batch.metrics["env/invalid_action_rate"] == 0.0
    assert batch.metrics["env/model_token_share"] == pytest.approx(12 / (12 + 5 * 6))


def test_turn_budget_ends_episodes() -> None:
    env = _env(6)
    batch = _play(env, [FakeWorker(lambda _: "r")], seeds=[0, 1, 2], num_samples=2, budget=_budget(max_turns=3))
    env.close()
    for ep in batch.episodes:  # always-right lasts 8+ steps, so 3 turns always end it first
        assert ep.num_turns == 3 and not ep.env_done
        assert sum(ep.sample.loss_mask) == 6  # 3 turns of "r" + EOS
        assert ep.sample.finish_reason is FinishReason.LENGTH
        assert ep.sample.reward == 3.0
    assert batch.metrics["env/episode_length_turns_mean"] == 3.0
    assert batch.metrics["env/env_done_rate"] == 0.0


def test_per_turn_token_budget_cuts_long_replies() -> None:
    env = _env(2)
    worker = FakeWorker(lambda _: "right" + "x" * 30)
    batch = _play(env, [worker], seeds=[0], num_samples=2, budget=_budget(max_turns=4, per_turn=5))
    env.close()
    assert {cap for _, cap in worker.calls} == {5}
    for ep in batch.episodes:
        model_runs = [ids for m, ids in _segments(ep.sample) if m == 1]
        assert [CharCodec().decode(ids) for ids in model_runs] == ["right"] * 4
        assert ep.num_invalid_actions == 0


def test_total_token_budget_and_context_are_respected() -> None:
    env = _env(4)
    batch = _play(env, [FakeWorker(_lean)], seeds=[0, 1], num_samples=2, budget=_budget(total=30, per_turn=2))
    for ep in batch.episodes:  # a turn costs 2 model + 6 env tokens: 3 full turns use 24, a 4th needs 32
        assert ep.sample.num_response_tokens <= 30 and ep.num_turns == 4
        assert ep.sample.finish_reason is FinishReason.LENGTH
    batch = _play(env, [FakeWorker(_lean)], seeds=[0, 1], num_samples=2, budget=_budget(per_turn=2, context=40))
    env.close()
    for ep in batch.episodes:
        assert len(ep.sample.prompt_token_ids) + ep.sample.num_response_tokens <= 40


def test_budget_cap_shrinks_last_turn() -> None:
    """When the token budget leaves fewer tokens than a turn may take, the last turn gets only what is left."""
    env = _env(1)
    worker = FakeWorker(lambda _: "rrrr", eos=False)
    batch = _play(env, [worker], seeds=[0], num_samples=1, budget=_budget(per_turn=4, total=13))
    env.close()
    assert [cap for _, cap in worker.calls] == [4, 3]  # 4 model + 6 env tokens, then 3 left
    assert batch.episodes[0].sample.num_response_tokens == 13


# ------------------------------------------------------------------------------------------------ invalid actions
def test_invalid_action_is_penalised_not_fatal() -> None:
    env = _env(4, penalty=-0.5)
    batch = _play(env, [FakeWorker(lambda _: "???")], seeds=[0, 1], num_samples=2, budget=_budget())
    env.close()
    for ep in batch.episodes:  # every reply is invalid: the default action (left) plays until the pole falls
        assert ep.env_done and 5 <= ep.num_turns <= 20
        assert ep.num_invalid_actions == ep.num_turns
        assert ep.env_return == pytest.approx(0.5 * ep.num_turns)  # +1 per step, -0.5 per invalid reply
        assert ep.sample.reward == pytest.approx(ep.env_return)
    assert batch.metrics["env/invalid_action_rate"] == 1.0


def test_return_scale_and_mixed_validity() -> None:
    env = _env(2)
    replies = iter(["r", "?", "l", "?"] * 50)
    fmt = EpisodeFormat(prompt_template="{observation}", observation_template="|{observation}>", return_scale=0.1)
    batch = _play(env, [FakeWorker(lambda _: next(replies))], seeds=[0], num_samples=2,
                  budget=_budget(max_turns=4), fmt=fmt)
    env.close()
    invalid = sum(ep.num_invalid_actions for ep in batch.episodes)
    assert invalid == 4 and batch.metrics["env/invalid_action_rate"] == 0.5
    for ep in batch.episodes:
        assert ep.sample.reward == pytest.approx(0.1 * ep.env_return)


# ------------------------------------------------------------------------------------------------ groups and episodes
def test_same_seed_groups_see_the_same_initial_state() -> None:
    env = _env(12, renderer="default")
    fmt = EpisodeFormat(prompt_template="{observation}", observation_template="\n{observation}\n")
    batch = _play(env, [FakeWorker(lambda _: "left")], seeds=[7, 8, 9], num_samples=4, budget=_budget(), fmt=fmt)
    env.close()
    assert [g.group_id for g in batch.groups] == [100, 101, 102]
    assert [g.prompt_id for g in batch.groups] == [7, 8, 9]
    prompts = []
    for g in batch.groups:
        assert [s.sample_index for s in g.samples] == [0, 1, 2, 3]
        assert len({tuple(s.prompt_token_ids) for s in g.samples}) == 1
        assert len({tuple(s.response_token_ids) for s in g.samples}) == 1  # same state + same actions = same episode
        assert len({s.reward for s in g.samples}) == 1
        prompts.append(CharCodec().decode(g.samples[0].prompt_token_ids))
    assert len(set(prompts)) == 3 and prompts[0].startswith("cart position:")


def test_episodes_run_to_termination() -> None:
    env = _env(8, renderer="default")
    batch = _play(env, [FakeWorker(lambda _: "left")], seeds=[0, 1, 2, 3], num_samples=2, budget=_budget())
    env.close()
    for ep in batch.episodes:  # always pushing left topples the pole within ~8-12 steps
        assert ep.env_done and ep.sample.finish_reason is FinishReason.STOP
        assert 5 <= ep.num_turns <= 20 and ep.env_return == ep.num_turns
    assert batch.metrics["env/env_done_rate"] == 1.0
    assert batch.metrics["time/env_s"] > 0


def test_lean_policy_beats_random_valid_actions() -> None:
    """The compact observation carries what a good policy needs (the spec's learning target)."""
    import random

    env = _env(64)
    rng = random.Random(0)
    lean = _play(env, [FakeWorker(_lean)], seeds=list(range(16)), num_samples=4, budget=_budget(max_turns=24))
    rand = _play(env, [FakeWorker(lambda _: rng.choice("lr"))], seeds=list(range(16)), num_samples=4,
                 budget=_budget(max_turns=24))
    env.close()
    assert lean.metrics["env/episode_return_mean"] == 24.0
    assert rand.metrics["env/episode_return_mean"] < 22.0


def test_groups_stay_on_one_worker_each_turn() -> None:
    env = _env(8)
    workers = [FakeWorker(_lean), FakeWorker(_lean)]
    _play(env, workers, seeds=[0, 1, 2, 3], num_samples=2, budget=_budget(max_turns=3))
    env.close()
    for w, mine in zip(workers, ({100, 102}, {101, 103}), strict=True):
        assert len(w.calls) == 3  # one batched call per turn
        for keys, _ in w.calls:
            assert {g for g, _ in keys} == mine and len(keys) == 4


def test_prompt_too_long_for_the_context_is_an_error() -> None:
    env = _env(2)
    with pytest.raises(ValueError, match="no room for a model turn"):
        _play(env, [FakeWorker(_lean)], seeds=[0], num_samples=2, budget=_budget(context=4))
    env.close()


def test_env_size_must_match_seeds_times_samples() -> None:
    env = _env(4)
    with pytest.raises(ValueError, match="4 envs"):
        _play(env, [FakeWorker(_lean)], seeds=[0, 1, 2], num_samples=2, budget=_budget())
    env.close()


# ------------------------------------------------------------------------------------------------ formats and rewards
def test_whitespace_replacement() -> None:
    fmt = EpisodeFormat(prompt_template="{action_help}\n{observation}", replace_whitespace="|")
    assert fmt.prompt("a b\n c", "say x") == "say|x|a|b|c"
    assert EpisodeFormat(observation_template="\n{observation}\n", replace_whitespace="").env_turn("1 2", "") == "12"
    with pytest.raises(ValueError, match="observation"):
        EpisodeFormat(prompt_template="no placeholder")


def test_env_return_reward() -> None:
    fn = load_reward("env_return")
    batch = RewardInputs(response_token_ids=[[1], [2]], response_texts=["", ""], answers=["", ""],
                         answer_token_ids=[[], []], eos_token_id=1, env_returns=[2.5, -1.0])
    assert fn(batch).tolist() == [2.5, -1.0]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="env.task_id"):
        fn(RewardInputs(response_token_ids=[[1]], response_texts=[""], answers=[""], answer_token_ids=[[]],
                        eos_token_id=1))


# ------------------------------------------------------------------------------------------------ spec
def test_env_is_off_by_default_and_the_shipped_spec_turns_it_on() -> None:
    assert load_config(ROOT / "configs/demo.yaml").env.task_id == ""
    cfg = load_config(ROOT / "configs/envpool_cartpole.yaml")
    assert cfg.env.task_id == "CartPole-v1" and cfg.env.renderer == "compact"
    assert [t.name for t in cfg.reward.terms] == ["env_return"]


def test_bad_env_values_are_config_errors(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("model: {path: m}\nenv: {task_id: CartPole-v1, max_turns: 0}\n")
    with pytest.raises(ConfigError, match=r"env: max_turns must be >= 1"):
        load_config(spec)
    spec.write_text("model: {path: m}\nenv: {task_id: CartPole-v1, observation_template: '{obs}'}\n")
    with pytest.raises(ConfigError, match=r"observation_template must contain"):
        load_config(spec)


@pytest.mark.parametrize("renderer", ["default", "compact"])
def test_unknown_task_id_suggests_close_matches(renderer: str) -> None:
    with pytest.raises(ValueError, match=r"unknown EnvPool task id 'CartPol-v1'.*did you mean 'CartPole-v1'"):
        make_episode_env(EnvConfig(task_id="CartPol-v1", renderer=renderer), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no compact renderer for 'Pong-v5'"):
        make_episode_env(EnvConfig(task_id="Pong-v5", renderer="compact"), 2)


def test_preflight_reports_env_problems(tiny_model_dir: Path, tmp_path: Path) -> None:
    from rlplat.driver.run_state import preflight

    spec = ROOT / "configs/envpool_cartpole.yaml"
    base = [f"model.path={tiny_model_dir}", f"experiment.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"env\.task_id: unknown EnvPool task id 'CartPole-v9'.*'CartPole-v1'"):
        preflight(load_config(spec, [*base, "env.task_id=CartPole-v9"]))
    with pytest.raises(ConfigError, match=r"reward\.terms: .*env_return"):
        preflight(load_config(spec, [*base, "reward.terms=[{name: digit_accuracy}]"]))
    with pytest.raises(ConfigError, match=r"exceed the model context of 128"):
        preflight(load_config(spec, [*base, "rollout.max_new_tokens=126"]))
    preflight(load_config(spec, base))  # the shipped spec fits the tiny model's context
