"""User reward functions: named in the spec as file.py:function; failures and hangs are reported by name."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.registry import RewardError, combined_reward, load_reward

USER_FILE = '''
import time
import torch

def good(batch):
    return [float(len(r)) for r in batch.response_token_ids]

def hangs(batch):
    time.sleep(30)

def raises(batch):
    raise KeyError("answer")

def wrong_shape(batch):
    return torch.zeros(len(batch) + 1)

def nan(batch):
    return [1.0, float("nan")]

def strings(batch):
    return ["good", "bad"]

def nothing(batch):
    pass

def long_message(batch):
    raise ValueError("first line\\nsecond line\\n  third")
'''


@pytest.fixture
def user_file(tmp_path: Path) -> str:
    p = tmp_path / "my_rewards.py"
    p.write_text(USER_FILE)
    return str(p)


def _batch() -> RewardInputs:
    return RewardInputs(response_token_ids=[[5, 6, 1], [5, 7]], response_texts=["", ""], answers=["", ""],
                        answer_token_ids=[[5, 6], [5, 6]], eos_token_id=1)


def test_weighted_sum_of_builtin_and_user_function(user_file: str) -> None:
    total, metrics = combined_reward([("exact_match", 2.0), (f"{user_file}:good", 0.5)], _batch())
    torch.testing.assert_close(total, torch.tensor([2.0 + 1.5, 1.0]))
    assert metrics == {"reward/exact_match": 0.5, "reward/good": 2.5}


def test_hanging_function_is_stopped_by_time_limit_and_named(user_file: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(RewardError, match=r"reward function '.*my_rewards.py:hangs' exceeded its time limit of 0.5 s"):
        combined_reward([(f"{user_file}:hangs", 1.0)], _batch(), timeout_s=0.5)
    assert time.perf_counter() - t0 < 10


def test_raising_function_is_named(user_file: str) -> None:
    with pytest.raises(RewardError, match=r"my_rewards.py:raises' raised KeyError"):
        combined_reward([(f"{user_file}:raises", 1.0)], _batch())


def test_wrong_shape_is_named(user_file: str) -> None:
    with pytest.raises(RewardError, match=r"wrong_shape' returned shape \(3,\), expected \(2,\)"):
        combined_reward([(f"{user_file}:wrong_shape", 1.0)], _batch())


@pytest.mark.parametrize("fn, message", [
    ("nan", r"'.*my_rewards.py:nan' returned nan for sample 1 \(1 of 2 non-finite\)"),
    ("strings", r"'.*my_rewards.py:strings' returned list, not numbers .*; return one float per sample"),
    ("nothing", r"'.*my_rewards.py:nothing' returned NoneType, not numbers"),
    ("long_message", r"'.*my_rewards.py:long_message' raised ValueError: first line second line third$"),
])
def test_bad_values_are_one_line_naming_the_function(user_file: str, fn: str, message: str) -> None:
    with pytest.raises(RewardError, match=message) as failure:
        combined_reward([(f"{user_file}:{fn}", 1.0)], _batch())
    assert "\n" not in str(failure.value)


HUNG_SCRIPT = """
import sys, time
from rlplat.config import RewardConfig, RewardTerm
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.registry import RewardError, score_with_spec

batch = RewardInputs(response_token_ids=[[5]], response_texts=["5"], answers=["5"], answer_token_ids=[[5]],
                     eos_token_id=1)
cfg = RewardConfig(terms=(RewardTerm(name=sys.argv[1]),), timeout_s=0.5)
try:
    score_with_spec(cfg, batch)
except RewardError as e:
    print(f"rlplat: error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def test_hung_reward_does_not_keep_the_process_alive(user_file: str, tmp_path: Path) -> None:
    """The scoring path in a fresh interpreter: after the time limit the process exits at once with one line, even
    though the user's function is still sleeping (30 s) in its thread."""
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(HUNG_SCRIPT))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(script), f"{user_file}:hangs"], capture_output=True, text=True,
                          timeout=25, cwd=Path(__file__).resolve().parents[3])
    elapsed = time.perf_counter() - t0
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"rlplat: error: reward function '{user_file}:hangs' exceeded its time limit of 0.5 s (reward.timeout_s)"]
    assert elapsed < 20, f"the process took {elapsed:.1f} s to exit"


@pytest.mark.parametrize("name, message", [
    ("nope", "unknown reward 'nope'"),
    ("missing.py:f", "file 'missing.py' does not exist"),
])
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_reward(name)


def test_missing_function_in_file(user_file: str) -> None:
    with pytest.raises(ValueError, match="has no function 'absent'"):
        load_reward(f"{user_file}:absent")
