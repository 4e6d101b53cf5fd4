"""trained_groups.jsonl after a resume: the lines of steps after the checkpoint go, a marker line records the resume,
and the file is replaced whole (never half-written)."""

from __future__ import annotations

import json
from pathlib import Path

from rlplat.driver.run_state import rewind_trained


def _line(step: int) -> str:
    return json.dumps({"step": step, "prompt_ids": [step], "group_ids": [10 * step]})


def test_steps_after_the_checkpoint_go_and_a_marker_is_added(tmp_path: Path) -> None:
    path = tmp_path / "trained_groups.jsonl"
    path.write_text("".join(f"{_line(s)}\n" for s in (1, 2, 3, 4)) + '{"step": 5, "prompt_i')  # killed mid-line
    assert rewind_trained(path, 2) == 3
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r.get("step") for r in records] == [1, 2, None]
    assert records[2]["resumed_from_step"] == 2 and records[2]["time_utc"].endswith("Z")
    assert not list(tmp_path.glob(".*tmp"))


def test_a_second_resume_keeps_the_first_marker_when_it_is_not_later(tmp_path: Path) -> None:
    path = tmp_path / "trained_groups.jsonl"
    path.write_text("".join(f"{_line(s)}\n" for s in (1, 2)))
    rewind_trained(path, 2)
    with open(path, "a") as f:
        f.write("".join(f"{_line(s)}\n" for s in (3, 4, 5)))
    assert rewind_trained(path, 4) == 1
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(r.get("step"), r.get("resumed_from_step")) for r in records] == [
        (1, None), (2, None), (None, 2), (3, None), (4, None), (None, 4)]
    assert rewind_trained(path, 1) == 5  # back to an older checkpoint: its later markers go too
    assert [r.get("step", -r.get("resumed_from_step", 0)) for r in map(json.loads, path.read_text().splitlines())] \
        == [1, -1]


def test_no_file_yet_gets_just_the_marker(tmp_path: Path) -> None:
    path = tmp_path / "trained_groups.jsonl"
    assert rewind_trained(path, 6) == 0
    assert json.loads(path.read_text())["resumed_from_step"] == 6
