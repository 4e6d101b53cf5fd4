"""Code-execution reward: run the program in each response against its dataset row's tests in the sandbox.

The program is the response's LAST fenced code block tagged python / py / python3 (or untagged). Dataset
column `tests` (a list, or a JSON string holding one), each item one of:
  - a string of Python statements, typically `assert add(2, 3) == 5`: run after the program, in its namespace
    (the program is loaded as module `solution`, so its `if __name__ == "__main__":` block does not run);
  - an object {"input": "...", "output": "..."}: the program runs as the main script with `input` on stdin and
    passes when it exits with status 0 and its stdout equals `output` (trailing whitespace of each line and
    trailing blank lines ignored).
reward = format_score + (1 - format_score) * (tests passed / tests) for a response with a code block, 0.0
without one. A test that raises, times out (`timeout_per_test_s`) or crashes the interpreter fails; if the
program itself crashes or hangs while loading, all of its assert tests fail.

Execution: every sample's assert tests run in ONE sandboxed process (a small harness with a per-test alarm);
every stdin/stdout test runs in its own process. All of a batch's executions are submitted at once to the
sandbox pool (`rlplat.sandbox`), which bounds how many run concurrently.

Trust: the harness shares its process with the program, so a program written to attack the harness (reading
the result marker from argv and printing a forged line) could fake assert results; exiting early
(`os._exit(0)`) cannot, because a sample without the harness's result line scores 0. Stdin/stdout tests are
judged outside the sandbox and cannot be faked that way.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from rlplat.rewards.basic import RewardInputs
from rlplat.sandbox import Sandbox, SandboxLimits, SandboxResult, default_sandbox

_FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_STARTUP_S = 1.0  # interpreter start, on top of the test time budget

# The harness: loads solution.py as a module, runs each test under an alarm, writes "<marker> [bools]" to the
# process's original stdout; the program's own stdout goes to /dev/null.
_HARNESS = r"""
import json, os, signal, sys, traceback
def _run():
    marker, per_test = sys.argv[1], float(sys.argv[2])
    out = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the program's prints can't push the result past the cap
    with open("tests.json") as f:
        tests = json.load(f)
    def on_alarm(signum, frame):
        raise TimeoutError("test ran over %g s" % per_test)
    signal.signal(signal.SIGALRM, on_alarm)
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    def attempt(source, name):
        signal.setitimer(signal.ITIMER_REAL, per_test)
        try:
            exec(compile(source, name, "exec"), ns)
            return True
        except BaseException:
            traceback.print_exc(limit=2)
            return False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    with open("solution.py") as f:
        loaded = attempt(f.read(), "solution.py")
    passed = [loaded and attempt(t, "<test %d>" % i) for i, t in enumerate(tests)]
    os.write(out, ("\n" + marker + " " + json.dumps(passed) + "\n").encode())
_run()
"""


@dataclass(frozen=True, slots=True)
class IOTest:
    """One stdin/stdout test."""

    input: str
    output: str


def extract_program(text: str) -> str | None:
    """The last fenced python (or untagged) code block of a response; None without one.

    >>> extract_program("try\\n```python\\nprint(1)\\n```\\nbetter:\\n```py\\nprint(2)\\n```\\n```text\\nout\\n```")
    'print(2)\\n'
    """
    blocks = [m.group(2) for m in _FENCE.finditer(text)]
    return blocks[-1] if blocks else None


def parse_tests(value: Any, row: int = 0) -> list[str | IOTest]:
    """A row's `tests` value as assert snippets and IOTests; ValueError naming the row when malformed.

    >>> parse_tests('["assert f(1) == 2", {"input": "3\\\\n", "output": "9"}]')
    ['assert f(1) == 2', IOTest(input='3\\n', output='9')]
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"row {row}: column 'tests' is a string but not JSON ({e.msg})") from None
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ValueError(f"row {row}: column 'tests' must be a non-empty list, got {type(value).__name__}")
    tests: list[str | IOTest] = []
    for j, item in enumerate(value):
        if isinstance(item, str):
            tests.append(item)
        elif isinstance(item, Mapping) and isinstance(item.get("input"), str) and isinstance(item.get("output"), str):
            tests.append(IOTest(input=item["input"], output=item["output"]))
        else:
            raise ValueError(f"row {row}: test {j} must be an assert string or {{\"input\": str, \"output\": str}}, "
                             f"got {json.dumps(item, default=str)[:80]}")
    return tests


def read_tests_column(batch: Any) -> list[Any]:
    """The `tests` column of a batch: `batch.column("tests")` where RewardInputs has it, else its `columns` rows."""
    if hasattr(batch, "column"):
        return batch.column("tests")
    rows = getattr(batch, "columns", ())
    if len(rows) != len(batch.response_texts) or any(r.get("tests") is None for r in rows):
        raise ValueError("the code_tests reward needs the dataset column 'tests' in every row")
    return [r["tests"] for r in rows]


def code_tests(batch: RewardInputs, *, sandbox: Sandbox | None = None, timeout_per_test_s: float = 2.0,
               format_score: float = 0.0) -> torch.Tensor:
    """Per sample: share of the row's tests the response's program passes (see the module docstring) [B] f32.

    sandbox: the pool to run in (default: the process-wide `default_sandbox()`, one slot per CPU).
    """
    if not 0.0 <= format_score < 1.0:
        raise ValueError(f"format_score must be in [0, 1), got {format_score}")
    rows = [parse_tests(v, i) for i, v in enumerate(read_tests_column(batch))]
    programs = [extract_program(t) for t in batch.response_texts]
    fractions = score_programs(programs, rows, sandbox=sandbox or default_sandbox(),
                               timeout_per_test_s=timeout_per_test_s)
    out = torch.zeros(len(programs))
    for i, (program, frac) in enumerate(zip(programs, fractions, strict=True)):
        if program is not None:
            out[i] = format_score + (1.0 - format_score) * frac
    return out


def score_programs(programs: Sequence[str | None], tests: Sequence[Sequence[str | IOTest]], *, sandbox: Sandbox,
                   timeout_per_test_s: float) -> list[float]:
    """Fraction of tests passed per program (0.0 for None), all executions submitted to `sandbox` at once."""
    pending: list[tuple[list[Future[SandboxResult]], list[Future[SandboxResult]], str, int]] = []
    for program, row in zip(programs, tests, strict=True):
        asserts = [t for t in row if isinstance(t, str)]
        ios = [t for t in row if isinstance(t, IOTest)]
        marker = uuid.uuid4().hex
        assert_runs: list[Future[SandboxResult]] = []
        io_runs: list[Future[SandboxResult]] = []
        if program is not None:
            if asserts:
                limits = _limits(sandbox, timeout_per_test_s * (len(asserts) + 1))
                assert_runs.append(sandbox.submit(_HARNESS, args=[marker, str(timeout_per_test_s)], limits=limits,
                                                  files={"solution.py": program, "tests.json": json.dumps(asserts)}))
            io_runs = [sandbox.submit(program, stdin=t.input, limits=_limits(sandbox, timeout_per_test_s))
                       for t in ios]
        pending.append((assert_runs, io_runs, marker, len(row)))
    scores = []
    for (assert_runs, io_runs, marker, num_tests), row in zip(pending, tests, strict=True):
        num_asserts = sum(isinstance(t, str) for t in row)
        passed = sum(min(_harness_passes(f.result(), marker), num_asserts) for f in assert_runs)
        ios = [t for t in row if isinstance(t, IOTest)]
        passed += sum(_io_passes(f.result(), t) for f, t in zip(io_runs, ios, strict=True))
        scores.append(passed / num_tests if num_tests else 0.0)
    return scores


def _limits(sandbox: Sandbox, seconds: float) -> SandboxLimits:
    base = sandbox.limits
    return SandboxLimits(timeout_s=seconds + _STARTUP_S, cpu_s=max(1, int(seconds + _STARTUP_S + 0.999)),
                         memory_bytes=base.memory_bytes, file_size_bytes=base.file_size_bytes,
                         max_processes=base.max_processes, max_open_files=base.max_open_files,
                         max_output_bytes=base.max_output_bytes)


def _harness_passes(res: SandboxResult, marker: str) -> int:
    """Number of assert tests passed: from the harness's last result line; 0 if it never printed one."""
    lines = [line for line in res.stdout.splitlines() if line.startswith(marker + " ")]
    if res.timed_out or not lines:
        return 0
    try:
        passed = json.loads(lines[-1][len(marker) + 1:])
    except json.JSONDecodeError:
        return 0
    return sum(1 for p in passed if p is True) if isinstance(passed, list) else 0


def _io_passes(res: SandboxResult, test: IOTest) -> bool:
    return res.ok and not res.stdout_truncated and _normalize(res.stdout) == _normalize(test.output)


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()
