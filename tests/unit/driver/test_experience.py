"""Experience without Ray: dynamic sampling over a scripted rollout, scored by the real reward path."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.config import ConfigError, load_config
from rlplat.driver.experience import Experience, Tokens, first_group_id, groups_with_signal
from rlplat.driver.prompts import load_prompt_sets
from rlplat.types import FinishReason, Group, Sample
from tests.conftest import ROOT, smoke_overrides


def _group(gid: int, responses: list[str], tokens: Tokens, answer: str = "12") -> Group:
    samples = []
    for i, text in enumerate(responses):
        s = Sample(group_id=gid, sample_index=i, prompt_id=0, prompt_token_ids=[1, 2], answer=answer)
        ids = tokens.encode(text) + [tokens.eos_token_id]
        s.extend(ids, [-0.1] * len(ids), [0] * len(ids), FinishReason.STOP)
        samples.append(s)
    return Group(group_id=gid, prompt_id=0, samples=samples)


class ScriptedRollout:
    """Draw d returns the d-th scripted list of groups; records the draws it was asked for."""

    def __init__(self, draws: list[list[Group]]) -> None:
        self.draws, self.asked = draws, []

    def collect(self, step: int, version: int, draw: int = 0):
        self.asked.append(draw)
        return self.draws[draw], {"rollout/drawn": float(len(self.draws[draw]))}

    def state(self):
        return []

    def load_state(self, state) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture()
def setup(tiny_model_dir: Path, tmp_path: Path):
    def make(*extra: str):
        cfg = load_config(ROOT / "configs/smoke/grpo.yaml", [*smoke_overrides(tiny_model_dir, tmp_path),
                                                             "rollout.num_prompts_per_step=2",
                                                             "reward.terms=[{name: exact_match}]", *extra])
        tokens = Tokens(cfg.model.path)
        return cfg, tokens, load_prompt_sets(cfg, tokens.tok)[0]
    return make


def test_first_group_ids_never_collide() -> None:
    ids = {first_group_id(s, d, a) for s in range(1, 4) for d in range(9) for a in range(9)}
    assert len(ids) == 3 * 9 * 9 and first_group_id(2, 1, 3) == 2_130_000


def test_groups_with_signal(setup) -> None:
    cfg, tokens, _ = setup()
    groups = [_group(1, ["12", "12"], tokens), _group(2, ["12", "3"], tokens), _group(3, ["4", "5"], tokens)]
    for g in groups:
        for s, r in zip(g.samples, ([1.0, 1.0], [1.0, 0.0], [0.0, 0.0])[g.group_id - 1], strict=True):
            s.reward = r
    assert groups_with_signal(groups) == [False, True, False]


def test_dynamic_sampling_draws_until_enough_groups_carry_signal(setup) -> None:
    cfg, tokens, prompts = setup("algorithm.dynamic_sampling.enabled=true",
                                 "algorithm.dynamic_sampling.max_draw_rounds=3")
    rollout = ScriptedRollout([
        [_group(1, ["12", "12"], tokens), _group(2, ["12", "9"], tokens)],   # one with signal
        [_group(3, ["9", "8"], tokens), _group(4, ["12", "7"], tokens)],     # one more: enough
        [_group(5, ["12", "1"], tokens), _group(6, ["12", "2"], tokens)],    # never drawn
    ])
    groups, metrics = Experience(cfg, None, tokens, prompts, rollout, save_unscored=None).produce(0, 0)
    assert rollout.asked == [0, 1]
    assert [g.group_id for g in groups] == [2, 4]
    assert metrics["dynamic/groups_drawn"] == 4 and metrics["dynamic/groups_kept"] == 2
    assert metrics["dynamic/groups_dropped"] == 2 and metrics["dynamic/draw_rounds"] == 2
    assert metrics["dynamic/shortfall"] == 0


def test_dynamic_sampling_stops_at_the_round_limit_and_tops_up(setup) -> None:
    cfg, tokens, prompts = setup("algorithm.dynamic_sampling.enabled=true",
                                 "algorithm.dynamic_sampling.max_draw_rounds=2")
    rollout = ScriptedRollout([[_group(1, ["1", "1"], tokens), _group(2, ["12", "3"], tokens)],
                               [_group(3, ["2", "2"], tokens), _group(4, ["5", "6"], tokens)]])
    groups, metrics = Experience(cfg, None, tokens, prompts, rollout, save_unscored=None).produce(0, 0)
    assert rollout.asked == [0, 1]
    assert [g.group_id for g in groups] == [2, 1]  # the kept one, then the first dropped one
    assert metrics["dynamic/shortfall"] == 1 and metrics["dynamic/draw_rounds"] == 2


def test_without_dynamic_sampling_one_draw_is_the_batch(setup) -> None:
    cfg, tokens, prompts = setup()
    rollout = ScriptedRollout([[_group(1, ["1", "1"], tokens), _group(2, ["2", "2"], tokens)]])
    groups, metrics = Experience(cfg, None, tokens, prompts, rollout, save_unscored=None).produce(0, 0)
    assert rollout.asked == [0] and [g.group_id for g in groups] == [1, 2]
    assert not any(k.startswith("dynamic/") for k in metrics)


def test_dynamic_sampling_is_refused_with_env_episodes(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="algorithm.dynamic_sampling: not supported with env episodes"):
        load_config(ROOT / "configs/envpool_cartpole.yaml", [*smoke_overrides(tiny_model_dir, tmp_path),
                                                             "algorithm.dynamic_sampling.enabled=true"])
