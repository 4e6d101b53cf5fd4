"""`rlplat bench`: the closing JSON line is the last line of stdout, the run is offline, a missing model is one line.

No Ray or vLLM here: a fake `quiet` stands in for ray.shutdown() flushing forwarded actor logs, a fake bench module
for a real one."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from rlplat import OFFLINE_ENV, cli
from rlplat.bench import common
from rlplat.config import ConfigError


def _headline() -> None:
    common.emit_headline("fake", metric="m", value=1.5, unit="s", goal=None, higher_is_better=False)


def test_headline_prints_after_what_quiet_prints(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> int:
        print("table")
        _headline()
        print("after the headline, in main")
        return 0

    status = common.headline_last(main, quiet=lambda: print("(RolloutActor pid=1) a late forwarded log"))
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines[:3] == ["table", "after the headline, in main", "(RolloutActor pid=1) a late forwarded log"]
    assert json.loads(lines[-1])["bench"] == "fake" and len(lines) == 4


def test_failing_bench_is_quieted_and_prints_no_headline(capsys: pytest.CaptureFixture[str]) -> None:
    quieted = []

    def main() -> int:
        _headline()
        raise ConfigError("model.path: missing")

    with pytest.raises(ConfigError):
        common.headline_last(main, quiet=lambda: quieted.append(True))
    assert quieted == [True] and capsys.readouterr().out == ""
    _headline()  # outside the CLI: printed at once
    assert json.loads(capsys.readouterr().out)["value"] == 1.5


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """rlplat.bench.fake: main(argv) records the environment it ran in and what argv asks for."""
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)  # restored after the test
    module = types.ModuleType("rlplat.bench.fake")
    module.seen = {}

    def main(argv: list[str]) -> int:
        module.seen.update({k: os.environ.get(k) for k in OFFLINE_ENV})
        if argv == ["--missing-model"]:
            common.ensure_model("no/such/model")
        _headline()
        print("last table line")
        return 0

    module.main = main
    monkeypatch.setitem(sys.modules, "rlplat.bench.fake", module)
    return module


def test_cli_bench_runs_offline_and_ends_with_the_headline(fake_bench: types.ModuleType,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "fake"]) == 0
    assert fake_bench.seen == OFFLINE_ENV
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "last table line" and json.loads(lines[-1])["bench"] == "fake"


def test_cli_bench_missing_model_is_one_line_exit_2(fake_bench: types.ModuleType,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "fake", "--missing-model"]) == cli.EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["rlplat: error: model.path: model directory 'no/such/model' does not exist "
                                "(create one with `python -m rlplat model tiny no/such/model`)"]


def test_ensure_model_writes_only_the_demo_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    written: list[Path] = []
    monkeypatch.setattr("rlplat.models.write_tiny_model", lambda p: written.append(Path(p)) or Path(p))
    assert common.ensure_model("models/tiny") == Path("models/tiny")
    assert common.ensure_model("elsewhere", write_if_missing=True) == Path("elsewhere")
    with pytest.raises(ConfigError, match="python -m rlplat model tiny models/medium"):
        common.ensure_model("models/medium")
    assert written == [Path("models/tiny"), Path("elsewhere")]
