"""A rollout actor killed during a run, or the vLLM engine core inside it: Ray restarts the actor (one whose engine
died ends itself), it gets the current weights, the run completes and every group is accounted for (each step
trains its own prompts, in cursor order, none twice or skipped). A user
reward that hangs ends `rlplat train` with one line, exit 2, and nothing of the run left running or in /dev/shm."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlplat.bench.faults_chaos import run_driver
from rlplat.config import load_config
from rlplat.data.datasets import EpochCursor
from rlplat.driver import chaos, loop
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow


def _kill_after_step(ray, trained: Path, step: int, target: str, killed: list[str]) -> None:
    """Once `step` is recorded: kill the run's rollout actor (target "actor") or the engine core process inside it
    ("engine": SIGKILL, as a native crash or the OOM killer would)."""
    deadline = time.time() + 600
    while time.time() < deadline:
        if trained.is_file() and len(trained.read_text().splitlines()) >= step:
            if target == "engine" and (pid := chaos.actor_pid(chaos.TARGETS["engine"])) is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(f"engine core {pid}")
                return
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith("rlplat-rollout-")]
            if names and target == "actor":
                ray.kill(ray.get_actor(names[0]), no_restart=False)  # like a crash: Ray restarts the process
                killed.append(names[0])
            return
        time.sleep(0.05)


def _train_killing_after_step_1(ray, cfg, out: Path, target: str = "actor"):
    """loop.train(cfg) while a thread kills a rollout actor or its engine core once step 1 is recorded; the run
    must finish with at least one restart logged."""
    killed: list[str] = []
    killer = threading.Thread(target=_kill_after_step, args=(ray, out / "trained_groups.jsonl", 1, target, killed))
    killer.start()
    result = loop.train(cfg, progress=False)
    killer.join()
    assert killed, "the test never found the rollout actor to kill"
    client = MlflowClient(result.tracking_uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert client.get_metric_history(result.run_id, "faults/rollout_restarts")[-1].value >= 1
    return result


def test_killed_rollout_actor_is_restarted_and_nothing_is_lost(ray_session, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    overrides = smoke_overrides(tiny_model_dir, tmp_path, **{"experiment.num_steps": 4,
                                                             "rollout.max_new_tokens": 100})
    cfg = load_config(ROOT / "configs/smoke/grpo.yaml", overrides)
    result = _train_killing_after_step_1(ray_session, cfg, tmp_path)
    client = MlflowClient(result.tracking_uri)
    assert client.get_run(result.run_id).data.metrics["sync/checksum_match"] == 1.0

    trained = [json.loads(x) for x in (tmp_path / "trained_groups.jsonl").read_text().splitlines()]
    d = cfg.data
    cursor = EpochCursor(d.num_train_prompts, seed=d.seed, shuffle=d.shuffle)  # the run's prompt order, from step 1
    expected = [cursor.take(cfg.rollout.num_prompts_per_step) for _ in range(4)]
    assert [t["prompt_ids"] for t in trained] == expected


def test_dead_engine_core_in_an_env_run_loses_nothing(ray_session, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Env episodes (CartPole): the engine core process inside the rollout actor is killed right after step 1 is
    recorded, i.e. while step 2's episodes are played (their turns are then played again from their seeds) or while
    its weights sync. The actor ends itself, Ray restarts it, the run finishes on the new engine, and every step
    trains its own seeds, in order."""
    extra = {"experiment.num_steps": 3, "rollout.num_prompts_per_step": 2, "rollout.num_samples_per_prompt": 2,
             "data.num_eval_prompts": 8}
    cfg = load_config(ROOT / "configs/envpool_cartpole.yaml", smoke_overrides(tiny_model_dir, tmp_path, **extra))
    _train_killing_after_step_1(ray_session, cfg, tmp_path, target="engine")
    trained = [json.loads(x) for x in (tmp_path / "trained_groups.jsonl").read_text().splitlines()]
    n = cfg.rollout.num_prompts_per_step
    assert [t["prompt_ids"] for t in trained] == [[cfg.env.seed + s * n + k for k in range(n)] for s in range(3)]


def test_hung_user_reward_ends_the_run_and_leaves_nothing_behind(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`rlplat train` in its own process; the reward sleeps for 10 minutes at the first scoring (evaluation before
    step 1). After reward.timeout_s the run ends: exit 2, one error line naming the function and the key, none of
    its processes (found by an environment tag they all inherit) alive 5 s later, no vLLM segment left."""
    rewards = tmp_path / "slow_rewards.py"
    rewards.write_text("import time\n\n\ndef hangs(batch):\n    time.sleep(600)\n")
    out = tmp_path / "out"
    args = [str(ROOT / "configs/smoke/grpo.yaml"),
            *smoke_overrides(tiny_model_dir, out, **{"experiment.num_steps": 2, "cluster.num_cpus": 4,
                                                     "reward.timeout_s": 3}),
            f'reward.terms=[{{name: "{rewards}:hangs", weight: 1.0}}]', "--no-progress"]
    t0 = time.monotonic()
    outcome = run_driver(args, out, "run", None, timeout_s=480)
    elapsed = time.monotonic() - t0
    log = (out / "run.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("rlplat: error:")]
    assert outcome.exit_code == 2, log[-3000:]
    assert len(errors) == 1 and errors[0].startswith(
        f"rlplat: error: reward function '{rewards}:hangs' exceeded its time limit of 3 s (reward.timeout_s)"), errors
    assert (outcome.leftover_processes, outcome.leftover_shm) == (0, 0), outcome
    print(f"hung reward: exit {outcome.exit_code} {elapsed:.0f} s after the start (engine start included)")
