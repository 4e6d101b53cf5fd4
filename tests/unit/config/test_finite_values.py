"""Issue 16 item 8: a non-finite number anywhere in a spec (an infinite lr, a NaN temperature, an endless timeout)
is a one-line ConfigError naming the key, from the file or from a CLI override."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "configs/demo.yaml"


@pytest.mark.parametrize("override", ["learner.lr=.inf", "rollout.temperature=.nan", "cluster.call_timeout_s=.inf",
                                      "reward.timeout_s=-.inf", "learner.lr=1e400"])
def test_non_finite_numbers_are_refused_naming_the_key(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(f"{key}: expected a finite number, got")):
        load_config(DEMO, [override])


def test_finite_values_still_load() -> None:
    cfg = load_config(DEMO, ["learner.lr=3e-4", "cluster.call_timeout_s=1e4", "rollout.temperature=0.7"])
    assert (cfg.learner.lr, cfg.cluster.call_timeout_s, cfg.rollout.temperature) == (3e-4, 1e4, 0.7)


def test_in_a_spec_file_through_the_cli_it_is_exit_2(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"base: {DEMO}\nlearner:\n  lr: .inf\n")
    assert main(["train", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rlplat: error: {spec}: learner.lr: expected a finite number, got inf"]


def test_an_absurd_batch_is_refused_with_its_size() -> None:
    with pytest.raises(ConfigError, match=r"1,000,000,000,000 samples per step; at most 1,000,000"):
        load_config(DEMO, ["rollout.num_prompts_per_step=1000000000000", "rollout.num_samples_per_prompt=1"])
    cfg = load_config(DEMO, ["rollout.num_prompts_per_step=1024", "rollout.num_samples_per_prompt=16"])
    assert cfg.rollout.num_prompts_per_step * cfg.rollout.num_samples_per_prompt == 16384  # a large real batch
