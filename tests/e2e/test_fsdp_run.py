"""A 2-rank FSDP2 learner (gloo on CPU) end to end through `loop.train`: real Ray, one real vLLM CPU engine, the tiny
model, 2 GRPO steps. The batch is split by tokens over the two learner actors, rank 0 broadcasts the weights it
gathers from the shards bucket by bucket (`placement.weight_sync: broadcast`), the engine ends up holding the learner's
weights (`sync/checksum_match`), each step's checkpoint holds the ranks' DCP shards inside the atomic checkpoint
folder, and the final model is written whole by rank 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlplat.config import load_config
from rlplat.driver import loop
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow


def test_two_rank_fsdp_run_syncs_into_the_engine(ray_session, tiny_model_dir: Path, tmp_path: Path) -> None:
    extra = {"experiment.num_steps": 2, "learner.num_ranks": 2, "learner.sync_bucket_mb": 1,
             "placement.weight_sync": "broadcast", "checkpoint.every_steps": 1, "data.num_eval_prompts": 8,
             "tracking.experiment_name": "rlplat-e2e-fsdp"}
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", smoke_overrides(tiny_model_dir, tmp_path, **extra))
    result = loop.train(cfg, progress=False)
    run = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["sync/checksum_match"] == 1.0 and metrics["sync/max_logp_diff"] < 1e-2
    assert math.isfinite(metrics["loss/policy"]) and metrics["train/grad_norm"] > 0
    assert 1.0 <= metrics["perf/learner_token_imbalance"] < 1.5  # both ranks got about half the tokens
    step2 = cfg.output_dir / "checkpoints" / "step_000002" / "learner"
    assert (step2 / "policy" / ".metadata").is_file() and (step2 / "rng_rank1.pt").is_file()
    assert (cfg.output_dir / "final_model" / "model.safetensors").is_file()
