"""Resolve reward names from the spec and combine several rewards with weights.

A spec names a built-in (`digit_accuracy`) or a user's function as `path/to/file.py:function`. A reward that
raises or returns the wrong shape fails with a message naming the function; the caller keeps the samples.
Built-ins that take parameters (`format_regex`: pattern, `length_penalty`: target_length_in_tokens) get them
bound by `load_reward`; a user's function always takes just the batch.

A user's reward receives the same `RewardInputs` batch as the built-ins: for B samples, `response_texts` (B
decoded responses), `response_token_ids`, `answers`, `eos_token_id`, and `columns`: the dataset row of each
sample (every column but the prompt), read with `batch.column("name")`. It returns B floats (a list or a [B]
tensor). Declaring `fn.required_columns` lets the run check the data files before any worker starts:

    # my_rewards.py                      spec:  reward: {terms: [{name: my_rewards.py:unit_tests_pass}]}
    def unit_tests_pass(batch):
        return [float(run_tests(code, tests))
                for code, tests in zip(batch.response_texts, batch.column("tests"))]
    unit_tests_pass.required_columns = ("tests",)

`required_columns(name)` gives what a reward reads (built-ins: REQUIRED_COLUMNS; a user's function: its
`required_columns` attribute); `check_reward_columns(names, columns)` raises a one-line ValueError for a
column the data lacks.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from rlplat.config import RewardConfig
from rlplat.rewards.basic import RewardInputs, digit_accuracy, env_return, exact_match
from rlplat.rewards.builtin import format_regex, length_penalty, math_verify, tensorbleu
from rlplat.rewards.code_tests import code_tests
from rlplat.rewards.countdown import countdown
from rlplat.user_code import load_function

RewardFn = Callable[[RewardInputs], "torch.Tensor | Sequence[float]"]


class RewardError(RuntimeError):
    """A reward function failed or returned a bad value; the message names the function."""


@functools.cache  # a user's file is imported once per run, not on every step
def load_reward(name: str, *, pattern: str = "", target_length_in_tokens: int = 0) -> RewardFn:
    """Return the reward function named `name` (built-in or `file.py:function`); ValueError if it can't load.

    pattern / target_length_in_tokens are bound to `format_regex` / `length_penalty` (which check them when
    called) and ignored for every other reward.
    """
    if name == "format_regex":
        return functools.partial(format_regex, pattern=pattern)
    if name == "length_penalty":
        return functools.partial(length_penalty, target_length_in_tokens=target_length_in_tokens)
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    path, sep, func = name.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise ValueError(f"unknown reward {name!r}: use one of {', '.join(BUILTIN_REWARDS)} or "
                         "path/to/file.py:function")
    return load_function(path, func, what=f"reward {name!r}")


def required_columns(name: str) -> tuple[str, ...]:
    """Dataset columns the reward `name` reads (built-in or `file.py:function`); loads a user's file to ask it.

    >>> required_columns("countdown"), required_columns("env_return")
    (('nums', 'target'), ())
    """
    if name in BUILTIN_REWARDS:
        return REQUIRED_COLUMNS.get(name, ())
    declared = getattr(load_reward(name), "required_columns", ())
    if isinstance(declared, str) or not all(isinstance(c, str) for c in declared):
        raise ValueError(f"reward {name!r}: required_columns must be a tuple of column names, got {declared!r}")
    return tuple(declared)


def check_reward_columns(names: Sequence[str], columns: Iterable[str], *, where: str = "the data") -> None:
    """ValueError (one line) unless every reward in `names` finds the columns it reads among `columns`.

    columns: the columns every row has (rlplat.data.datasets.common_columns). where: names the data in the message.

    >>> check_reward_columns(["countdown"], {"nums", "answer"}, where="data/train.jsonl")
    Traceback (most recent call last):
    ...
    ValueError: reward 'countdown' needs the column 'target', which data/train.jsonl lacks (columns: answer, nums)
    """
    have = set(columns)
    for name in names:
        for col in required_columns(name):
            if col not in have:
                raise ValueError(f"reward {name!r} needs the column {col!r}, which {where} lacks "
                                 f"(columns: {', '.join(sorted(have)) or 'none'})")


def score_with_spec(cfg: RewardConfig, batch: RewardInputs) -> tuple[list[float], dict[str, float]]:
    """The spec's `reward.terms` (weights and parameters bound) combined over `batch` within `reward.timeout_s`:
    (one reward per sample, metrics). The driver and the RewardActor both score through this."""
    terms = [(t.name, t.weight, load_reward(t.name, pattern=t.pattern,
                                            target_length_in_tokens=t.target_length_in_tokens)) for t in cfg.terms]
    total, metrics = combined_reward(terms, batch, timeout_s=cfg.timeout_s)
    return total.tolist(), metrics


def combined_reward(
    terms: Sequence[tuple[str, float] | tuple[str, float, RewardFn]],
    batch: RewardInputs,
    *,
    timeout_s: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_k w_k * r_k(batch) -> ([B] f32, {"reward/<name>": mean}); raises RewardError naming a failing term.

    terms: (name, weight), or (name, weight, fn) with fn from `load_reward(name, ...)` to pass parameters.

    timeout_s: each function's time limit; one that runs longer is reported by name. Its thread is abandoned
    (Python cannot stop a running function); it is a daemon thread, so a stuck function never keeps the process
    from exiting.
    """
    total = torch.zeros(len(batch))
    metrics: dict[str, float] = {}
    for term in terms:
        name, weight = term[0], term[1]
        fn = term[2] if len(term) == 3 else load_reward(name)
        values = _call(name, fn, batch, timeout_s)
        total += weight * values
        metrics[f"reward/{_short(name)}"] = float(values.mean()) if len(values) else 0.0
    return total, metrics


def _call(name: str, fn: RewardFn, batch: RewardInputs, timeout_s: float | None = None) -> torch.Tensor:
    out = _run_with_deadline(name, fn, batch, timeout_s)
    try:
        values = torch.as_tensor(out, dtype=torch.float32).detach().cpu()
    except Exception as e:
        raise RewardError(f"reward function {name!r} returned {type(out).__name__}, not numbers "
                          f"({_one_line(e)}); return one float per sample") from None
    if values.shape != (len(batch),):
        raise RewardError(f"reward function {name!r} returned shape {tuple(values.shape)}, expected ({len(batch)},)"
                          " (one float per sample)")
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        raise RewardError(f"reward function {name!r} returned {values[bad[0]].item()} for sample {bad[0]} "
                          f"({len(bad)} of {len(batch)} non-finite)")
    return values


def _run_with_deadline(name: str, fn: RewardFn, batch: RewardInputs, timeout_s: float | None) -> Any:
    """fn(batch) in a daemon thread, waited for at most timeout_s; RewardError naming `name` if it raises or hangs.

    A daemon thread (not a ThreadPoolExecutor, whose workers the interpreter joins at exit): a hung user function
    is left behind, and the process still exits once the run has failed.
    """
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["out"] = fn(batch)
        except BaseException as e:  # a user's function: report whatever it raises, by name
            result["error"] = e

    thread = threading.Thread(target=target, name=f"reward-{_short(name)}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise RewardError(f"reward function {name!r} exceeded its time limit of {timeout_s:g} s "
                          "(reward.timeout_s)")
    if "error" in result:
        e = result["error"]
        raise RewardError(f"reward function {name!r} raised {type(e).__name__}: {_one_line(e)}") from e
    return result.get("out")


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (a user's message may span several), at most 300 characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _short(name: str) -> str:
    return name.rpartition(":")[2]


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "digit_accuracy": digit_accuracy,
    "exact_match": exact_match,
    "env_return": env_return,
    "tensorbleu": tensorbleu,
    "math_verify": math_verify,
    "format_regex": format_regex,  # raises unless given `pattern`: load it with load_reward
    "length_penalty": length_penalty,  # raises unless given `target_length_in_tokens`: load it with load_reward
    "countdown": countdown,
    "code_tests": code_tests,  # runs each response against its row's `tests` in the sandbox (rlplat.sandbox)
}

# Dataset columns each built-in reads. The answer-based ones read `answers`, which the driver fills from the
# row's `answer` column; the digit tasks' rows have one too.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "digit_accuracy": ("answer",),
    "exact_match": ("answer",),
    "tensorbleu": ("answer",),
    "math_verify": ("answer",),
    "countdown": ("nums", "target"),
    "code_tests": ("tests",),
}
