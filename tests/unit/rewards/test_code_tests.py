"""code_tests: tables of (response, tests) -> reward, run in the real sandbox."""

from __future__ import annotations

import dataclasses
import doctest
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from rlplat.rewards import code_tests as code_tests_module
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.code_tests import code_tests, extract_program, parse_tests
from rlplat.sandbox import Sandbox, SandboxLimits


@dataclass
class Batch:
    """Just what the reward reads: response texts and dataset rows."""

    response_texts: list[str]
    columns: Sequence[Mapping[str, Any]]


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    with Sandbox(max_concurrency=2, limits=SandboxLimits(max_output_bytes=4096)) as sandbox:
        yield sandbox


def block(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15", "assert add(0, 0) == 0"]
SUM_IO = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"}]

TABLE = [
    ("correct", block("def add(a, b):\n    return a + b"), ADD_TESTS, 1.0),
    ("half right", block("def add(a, b):\n    return a + b if a > 0 else 7"), ADD_TESTS, 0.5),
    ("no code block", "def add(a, b): return a + b", ADD_TESTS, 0.0),
    ("syntax error", block("def add(a, b)\n    return a + b"), ADD_TESTS, 0.0),
    ("raises at load", block("raise RuntimeError('no')\ndef add(a, b):\n    return a + b"), ADD_TESTS, 0.0),
    ("sys.exit at load", block("import sys\nsys.exit(0)"), ADD_TESTS, 0.0),
    ("os._exit(0) at load skips the tests", block("import os\nos._exit(0)"), ADD_TESTS, 0.0),
    ("prints a lot", block("print('x' * 10**6)\ndef add(a, b):\n    return a + b"), ADD_TESTS, 1.0),
    ("main block does not run", block("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n"
                                      "    raise SystemExit(1)"), ADD_TESTS, 1.0),
    ("one test loops forever", block("def add(a, b):\n    while a == 10:\n        pass\n    return a + b"),
     ADD_TESTS, 0.75),
    ("stdin/stdout", block("a, b = map(int, input().split())\nprint(a + b)  "), SUM_IO, 1.0),
    ("stdin/stdout, wrong", block("a, b = map(int, input().split())\nprint(a - b)"), SUM_IO, 0.0),
    ("stdin/stdout, one crash", block("a, b = map(int, input().split())\nassert a < 5\nprint(a + b)"), SUM_IO, 0.5),
    ("last block counts", block("def add(a, b):\n    return 0") + block("def add(a, b):\n    return a + b"),
     ADD_TESTS, 1.0),
    ("mixed formats", block("import sys\ndef sq(x):\n    return x * x\nif __name__ == '__main__':\n"
                            "    print(sq(int(sys.stdin.read())))"),
     ["assert sq(3) == 9", {"input": "4", "output": "16"}, {"input": "5", "output": "24"}], 2 / 3),
]


def test_reward_table(sb: Sandbox) -> None:
    batch = Batch(response_texts=[r for _, r, _, _ in TABLE], columns=[{"tests": t} for _, _, t, _ in TABLE])
    start = time.monotonic()
    got = code_tests(batch, sandbox=sb, timeout_per_test_s=0.5).tolist()  # type: ignore[arg-type]
    assert time.monotonic() - start < 15
    for (name, _, _, want), value in zip(TABLE, got, strict=True):
        assert value == pytest.approx(want), name


def test_timeout_at_load_and_format_score(sb: Sandbox) -> None:
    batch = Batch(response_texts=[block("while True:\n    pass"), block("def add(a, b):\n    return a + b"),
                                  "no code"],
                  columns=[{"tests": '["assert add(1, 1) == 2", "assert add(2, 2) == 5"]'}] * 3)
    got = code_tests(batch, sandbox=sb, timeout_per_test_s=0.5, format_score=0.2).tolist()  # type: ignore[arg-type]
    assert got == pytest.approx([0.2, 0.2 + 0.8 * 0.5, 0.0])


def test_reads_reward_inputs_columns(sb: Sandbox) -> None:
    if "columns" not in {f.name for f in dataclasses.fields(RewardInputs)}:
        pytest.skip("RewardInputs has no dataset columns yet")
    batch = RewardInputs(response_token_ids=[[]], response_texts=[block("def add(a, b):\n    return a + b")],
                         answers=[""], answer_token_ids=[[]], eos_token_id=0,
                         columns=[{"tests": ADD_TESTS}])  # type: ignore[call-arg]
    assert code_tests(batch, sandbox=sb).tolist() == [1.0]


@pytest.mark.parametrize(("tests", "error"), [
    ([], "non-empty list"),
    ("not json", "not JSON"),
    ([{"input": "1"}], "test 0 must be"),
    ([3], "test 0 must be"),
])
def test_malformed_tests_name_the_row(tests: Any, error: str, sb: Sandbox) -> None:
    batch = Batch(response_texts=["", ""], columns=[{"tests": ["assert True"]}, {"tests": tests}])
    with pytest.raises(ValueError, match=f"row 1: .*{error}"):
        code_tests(batch, sandbox=sb)  # type: ignore[arg-type]


def test_missing_column(sb: Sandbox) -> None:
    with pytest.raises(ValueError, match="'tests'"):
        code_tests(Batch(response_texts=["x"], columns=[{"answer": "1"}]), sandbox=sb)  # type: ignore[arg-type]


def test_extraction_and_parsing() -> None:
    assert extract_program("```\nprint(1)\n```") == "print(1)\n"
    assert extract_program("```bash\nls\n```") is None
    assert parse_tests([{"input": "", "output": "x", "extra": 1}]) == [code_tests_module.IOTest(input="", output="x")]
    assert doctest.testmod(code_tests_module).failed == 0


def test_registered_as_a_builtin_reading_tests() -> None:
    from rlplat.rewards.registry import check_reward_columns, load_reward, required_columns

    assert load_reward("code_tests") is code_tests
    assert required_columns("code_tests") == ("tests",)
    with pytest.raises(ValueError, match="needs the column 'tests'"):
        check_reward_columns(["code_tests"], {"answer"})
