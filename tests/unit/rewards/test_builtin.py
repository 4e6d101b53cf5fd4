"""Built-in rewards: tables of (completion, label) -> reward, NLTK parity for tensorbleu, parameter checks."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import pytest
import torch
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

import rlplat.rewards.builtin as builtin
from rlplat.config import ConfigError, RewardTerm, load_config
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.builtin import format_regex, length_penalty, math_verify, tensorbleu
from rlplat.rewards.registry import BUILTIN_REWARDS, RewardError, combined_reward, load_reward

EOS = 1


def _ids(responses: list[list[int]], answers: list[list[int]], *,
         references: list[list[list[int]]] | None = None) -> RewardInputs:
    n = len(responses)
    return RewardInputs(response_token_ids=responses, response_texts=[""] * n, answers=[""] * n,
                        answer_token_ids=answers, eos_token_id=EOS, references=references)


def _texts(responses: list[str], answers: list[str]) -> RewardInputs:
    n = len(responses)
    return RewardInputs(response_token_ids=[[] for _ in range(n)], response_texts=responses, answers=answers,
                        answer_token_ids=[[] for _ in range(n)], eos_token_id=EOS)


def test_doctests() -> None:
    assert doctest.testmod(builtin).failed == 0


def test_all_registered() -> None:
    assert {"tensorbleu", "math_verify", "format_regex", "length_penalty"} <= set(BUILTIN_REWARDS)


# ------------------------------------------------------------------------------------------------ tensorbleu
# BLEU-4, floor smoothing (eps 0.1): values worked out by hand from p_n and the brevity penalty.
@pytest.mark.parametrize("response, answer, expected", [
    ([5, 6, 7, 8, EOS], [5, 6, 7, 8], 1.0),  # exact, EOS stripped
    ([5, 6, 7, 8], [5, 6, 7, 8], 1.0),  # no EOS (budget ended)
    ([5, 6, 7, 8, EOS, 9, 9, 9], [5, 6, 7, 8], 1.0),  # tokens after EOS are ignored
    ([5, 6, 7, 8, EOS, EOS, EOS], [5, 6, 7, 8], 1.0),  # EOS used as padding
    ([5, 6, 7, 9, EOS], [5, 6, 7, 8], (3 / 4 * 2 / 3 * 1 / 2 * 0.1) ** 0.25),
    ([2, 3, 4, EOS], [5, 6, 7, 8], 0.0),  # no unigram match
    ([EOS], [5, 6, 7, 8], 0.0),  # empty response
    ([5, 6, EOS], [5, 6, 7, 8], math.exp(1 - 4 / 2) * (1 * 1 * 0.1 * 0.1) ** 0.25),  # short: BP and floors
])
def test_tensorbleu_table(response: list[int], answer: list[int], expected: float) -> None:
    out = tensorbleu(_ids([response], [answer]))
    assert out.dtype == torch.float32 and out.shape == (1,)
    assert out.item() == pytest.approx(expected, abs=1e-6)


NLTK_CASES = [
    ([5, 6, 7, 8, 9, 5, 6], [[5, 6, 7, 8, 9, 5, 7]]),
    ([5, 6, 7], [[5, 6, 7, 8, 9], [6, 7, 5]]),  # closest reference length 3
    ([3, 3, 3, 3, 4], [[3, 4, 3, 4], [3, 3]]),  # clipping by the max count over references
    ([7, 8, 9, 10, 11, 12, 7, 8, 9], [[7, 8, 9, 10], [12, 11, 10, 9, 8, 7, 7, 8, 9, 10]]),
    ([4], [[4, 5, 6]]),  # shorter than every n >= 2
]


def test_tensorbleu_agrees_with_nltk_floor_smoothing() -> None:
    batch = _ids([c + [EOS] for c, _ in NLTK_CASES], [[] for _ in NLTK_CASES],
                 references=[[r + [EOS] for r in refs] for _, refs in NLTK_CASES])
    ours = tensorbleu(batch)
    floor = SmoothingFunction().method1
    expected = [nltk_sentence_bleu(refs, c, smoothing_function=floor) for c, refs in NLTK_CASES]
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)


def test_tensorbleu_samples_with_different_numbers_of_references() -> None:
    batch = _ids([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6]], [[], [], []],
                 references=[[[9, 9, 9, 9], [5, 6, 7, 8]], [[9, 9, 9, 9]], []])  # last: no reference -> 0
    assert tensorbleu(batch).tolist() == [1.0, 0.0, 0.0]


def test_tensorbleu_empty_batch() -> None:
    assert tensorbleu(_ids([], [])).shape == (0,)


@pytest.mark.gpu
def test_tensorbleu_runs_on_cuda_and_matches_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = NLTK_CASES * 64
    batch = _ids([c for c, _ in cases], [[] for _ in cases], references=[refs for _, refs in cases])
    on_gpu = tensorbleu(batch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.testing.assert_close(on_gpu.cpu(), tensorbleu(batch))


# ----------------------------------------------------------------------------------------------- math_verify
@pytest.mark.parametrize("completion, label, expected", [
    ("The answer is \\boxed{42}.", "42", 1.0),
    ("42", "42", 1.0),
    ("First 3, then 7", "7", 1.0),  # the last answer counts
    ("x = \\frac{1}{2}", "0.5", 1.0),
    ("0.5", "\\frac{1}{2}", 1.0),
    ("1/2", "\\frac12", 1.0),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{2}", 1.0),
    ("\\boxed{41}", "42", 0.0),
    ("I don't know", "42", 0.0),
    ("", "42", 0.0),
    ("42", "", 0.0),  # no gold answer: nothing can match
])
def test_math_verify_table(completion: str, label: str, expected: float) -> None:
    assert math_verify(_texts([completion], [label])).tolist() == [expected]


# ---------------------------------------------------------------------------------------------- format_regex
@pytest.mark.parametrize("completion, pattern, expected", [
    ("<think>plan</think><answer>7</answer>", r"<think>.*</think><answer>.*</answer>", 1.0),
    ("<think>line 1\nline 2</think><answer>7</answer>", r"<think>.*</think><answer>.*</answer>", 1.0),  # DOTALL
    ("<think>plan</think><answer>7</answer> extra", r"<think>.*</think><answer>.*</answer>", 0.0),  # full match
    ("sure! <think>plan</think><answer>7</answer>", r"<think>.*</think><answer>.*</answer>", 0.0),
    ("123", r"\d+", 1.0),
    ("", r"\d+", 0.0),
])
def test_format_regex_table(completion: str, pattern: str, expected: float) -> None:
    assert format_regex(_texts([completion], [""]), pattern=pattern).tolist() == [expected]


# -------------------------------------------------------------------------------------------- length_penalty
@pytest.mark.parametrize("response, target, expected", [
    ([5] * 3 + [EOS], 4, 0.0),
    ([5] * 4 + [EOS], 4, 0.0),  # at the target: no penalty (EOS does not count)
    ([5] * 5 + [EOS], 4, -0.25),
    ([5] * 8, 4, -1.0),  # no EOS: all tokens count
    ([5] * 12 + [EOS, EOS, EOS], 4, -2.0),
    ([EOS], 1, 0.0),
])
def test_length_penalty_table(response: list[int], target: int, expected: float) -> None:
    assert length_penalty(_ids([response], [[]]), target_length_in_tokens=target).tolist() == [expected]


# -------------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("term, message", [
    (dict(name="format_regex"), "format_regex needs a non-empty pattern"),
    (dict(name="format_regex", pattern="(unclosed"), "does not compile"),
    (dict(name="length_penalty"), "target_length_in_tokens >= 1"),
    (dict(name="length_penalty", target_length_in_tokens=-3), "target_length_in_tokens >= 1"),
])
def test_reward_term_parameter_errors(term: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardTerm(**term)


def test_other_terms_ignore_the_parameters() -> None:
    RewardTerm(name="exact_match", pattern="(unclosed", target_length_in_tokens=-1)


def test_bad_pattern_in_spec_is_a_config_error(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {path: m}\nreward:\n  terms:\n    - {name: format_regex, pattern: '[a-'}\n")
    with pytest.raises(ConfigError, match="does not compile"):
        load_config(spec)


def test_spec_parameters_load(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {path: m}\nreward:\n  terms:\n    - {name: format_regex, pattern: '\\d+'}\n"
                    "    - {name: length_penalty, weight: 0.1, target_length_in_tokens: 256}\n")
    terms = load_config(spec).reward.terms
    assert (terms[0].pattern, terms[1].target_length_in_tokens, terms[1].weight) == ("\\d+", 256, 0.1)


def test_parameterised_builtin_without_its_parameter_fails_by_name() -> None:
    with pytest.raises(RewardError, match=r"'format_regex' raised ValueError: format_regex needs a non-empty"):
        combined_reward([("format_regex", 1.0)], _texts(["7"], ["7"]))


# ---------------------------------------------------------------------------------------------------- combined
def test_weighted_sum_of_two_builtins() -> None:
    batch = RewardInputs(response_token_ids=[[5, 6, EOS], [5, 6, 7, 8, 9, 9, EOS], [5, EOS]],
                         response_texts=["<a>42</a>", "<a>41</a>", "42"], answers=["42", "42", "42"],
                         answer_token_ids=[[5, 6], [5, 6], [5]], eos_token_id=EOS)
    terms = [("format_regex", 2.0, load_reward("format_regex", pattern=r"<a>\d+</a>")),
             ("length_penalty", 0.5, load_reward("length_penalty", target_length_in_tokens=2))]
    total, metrics = combined_reward(terms, batch)
    # format: [1, 1, 0]; length: [0, -(6-2)/2, 0]
    torch.testing.assert_close(total, torch.tensor([2.0, 2.0 - 1.0, 0.0]))
    assert metrics == pytest.approx({"reward/format_regex": 2 / 3, "reward/length_penalty": -2 / 3})
