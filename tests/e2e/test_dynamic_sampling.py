"""Dynamic sampling (DAPO) end to end, with APRIL and with the async store: real Ray, real vLLM (CPU), tiny model.

The digit task's per-position reward gives groups whose samples all score the same now and then; the runs must draw
again, log what they drew, kept and dropped at every step, and never train a group twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlplat.config import load_config
from rlplat.driver import loop
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow

KEYS = ("dynamic/groups_drawn", "dynamic/groups_kept", "dynamic/groups_dropped", "dynamic/draw_rounds",
        "dynamic/shortfall")


@pytest.mark.parametrize("mode", ["april", "store"])
def test_dynamic_sampling_runs_with_april_and_the_store(ray_session, tiny_model_dir: Path, tmp_path: Path,
                                                        mode: str) -> None:
    extra = {"april": ["rollout.partial.enabled=true", "rollout.partial.over_provision=1.5"],
             "store": ["data.store.enabled=true", "data.store.max_staleness=1"]}[mode]
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", [
        *smoke_overrides(tiny_model_dir, tmp_path), "experiment.num_steps=2", "reward.terms=[{name: exact_match}]",
        "algorithm.dynamic_sampling.enabled=true", "algorithm.dynamic_sampling.max_draw_rounds=2", *extra])
    result = loop.train(cfg, progress=False)
    client = MlflowClient(result.tracking_uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    for key in KEYS:
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    drawn = {m.step: m.value for m in client.get_metric_history(result.run_id, "dynamic/groups_drawn")}
    rounds = {m.step: m.value for m in client.get_metric_history(result.run_id, "dynamic/draw_rounds")}
    # exact match of an untrained model is 0 for every sample: no group has a signal, so both draws happen
    assert all(rounds[s] == 2 and drawn[s] == 2 * cfg.rollout.num_prompts_per_step for s in (1, 2))
    trained = [json.loads(x) for x in (tmp_path / "trained_groups.jsonl").read_text().splitlines()]
    group_ids = [g for t in trained for g in t["group_ids"]]
    assert len(group_ids) == len(set(group_ids)) == 2 * cfg.rollout.num_prompts_per_step
