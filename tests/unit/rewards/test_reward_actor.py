"""Rewards scored in a RewardActor (`placement.reward_actor`) equal the driver's, and failures still name the
function. Real Ray, no engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.actors.reward import RewardActor
from rlplat.config import load_config
from rlplat.driver import experience, workers
from rlplat.rewards.registry import RewardError
from rlplat.types import FinishReason, Group, Sample
from tests.conftest import ROOT

REWARDS = """
def length(batch):
    return [float(len(t)) for t in batch.response_texts]

def broken(batch):
    raise KeyError("no such field")
"""


def _groups(tokens: experience.Tokens) -> list[Group]:
    samples = []
    for i, text in enumerate(["12", "1234", "7"]):
        s = Sample(group_id=0, sample_index=i, prompt_id=0, prompt_token_ids=tokens.encode("3+4="), answer="7")
        ids = tokens.encode(text)
        s.extend(ids, [0.0] * len(ids), 0, FinishReason.STOP)
        samples.append(s)
    return [Group(group_id=0, prompt_id=0, samples=samples)]


def test_actor_scores_like_the_driver_and_names_a_failing_function(ray_session, tiny_model_dir: Path,
                                                                   tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)  # a relative path in the spec: the actor must get it resolved
    terms = "[{name: rewards.py:length, weight: 0.5}, {name: exact_match, weight: 2.0}]"
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", [f"model.path={tiny_model_dir}", f"reward.terms={terms}"])
    tokens = experience.Tokens(str(tiny_model_dir))
    actor = RewardActor.remote(workers.absolute_reward_paths(cfg.reward))

    in_actor, in_driver = _groups(tokens), _groups(tokens)
    metrics = experience.score(cfg, in_actor, tokens, None, workers.Workers(rollout=[], reward=actor))
    assert metrics == experience.score(cfg, in_driver, tokens, None)
    assert [s.reward for s in in_actor[0].samples] == [1.0, 2.0, 0.5 + 2.0]  # 0.5 * len + 2 * exact_match

    bad = load_config(ROOT / "configs/smoke/grpo.yaml", [f"model.path={tiny_model_dir}",
                                                          "reward.terms=[{name: rewards.py:broken}]"])
    actor = RewardActor.remote(workers.absolute_reward_paths(bad.reward))
    with pytest.raises(RewardError, match="reward function '.*rewards.py:broken' raised KeyError"):
        experience.score(bad, _groups(tokens), tokens, None, workers.Workers(rollout=[], reward=actor))
