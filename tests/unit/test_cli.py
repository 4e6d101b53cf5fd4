"""Bad input: one line naming the problem and exit status 2, before any actor starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlplat.cli import main
from rlplat.models import TinyModelShape, write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs/smoke/grpo.yaml")


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("m") / "short", shape=TinyModelShape(max_position_embeddings=12))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    import ray

    was_running = ray.is_initialized()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert ray.is_initialized() == was_running, "Ray was started for a bad spec"
    return code, err


def test_unknown_key(capsys, tmp_path) -> None:
    code, err = _run(["train", SMOKE, "rollout.num_prompt_per_step=3", f"experiment.output_dir={tmp_path}"], capsys)
    assert code == 2 and "rollout.num_prompt_per_step: unknown key" in err and len(err.splitlines()) == 1


def test_wrong_type(capsys) -> None:
    code, err = _run(["train", SMOKE, "learner.lr=fast"], capsys)
    assert code == 2 and "learner.lr: expected float, got str" in err


def test_missing_spec_file(capsys) -> None:
    code, err = _run(["train", "configs/nope.yaml"], capsys)
    assert code == 2 and "spec file 'configs/nope.yaml' does not exist" in err


def test_missing_model_directory(capsys, tmp_path) -> None:
    code, err = _run(["train", SMOKE, f"model.path={tmp_path / 'absent'}"], capsys)
    assert code == 2 and "model.path:" in err and "does not exist" in err


def test_prompt_longer_than_context(capsys, short_context_model: Path) -> None:
    code, err = _run(["train", SMOKE, f"model.path={short_context_model}"], capsys)
    assert code == 2 and "exceed the model context of 12 tokens" in err


def test_bad_reward_name(capsys, tiny_model_dir: Path) -> None:
    code, err = _run(["train", SMOKE, f"model.path={tiny_model_dir}", "reward.terms=[{name: nope}]"], capsys)
    assert code == 2 and "unknown reward 'nope'" in err


def test_dry_run_prints_resolved_spec(capsys) -> None:
    assert main(["train", SMOKE, "--dry-run", "rollout.max_new_tokens=5", "cluster.address=local"]) == 0
    out = capsys.readouterr().out
    assert "max_new_tokens: 5" in out and "num_prompts_per_step: 4" in out


def test_model_tiny_writes_loadable_directory(tmp_path: Path) -> None:
    from rlplat.models import check_model_dir

    assert main(["model", "tiny", str(tmp_path / "t")]) == 0
    check_model_dir(tmp_path / "t")


def test_model_tiny_shape_options_reach_the_config(tmp_path: Path) -> None:
    from rlplat.models import max_context_length

    argv = ["model", "tiny", str(tmp_path / "t"), "--hidden-size", "64", "--num-heads", "2",
            "--intermediate-size", "96", "--context-length", "300"]
    assert main(argv) == 0
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]) == (64, 96, 2)
    assert max_context_length(tmp_path / "t") == 300


def test_eval_checkpoint_that_is_not_a_directory(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, err = _run(["eval", SMOKE, f"model.path={tiny_model_dir}", "--checkpoint", str(tmp_path / "nope")], capsys)
    assert code == 2 and "is not a directory" in err


def test_eval_checkpoint_of_unknown_layout_lists_the_accepted_ones(capsys, tiny_model_dir: Path, tmp_path) -> None:
    code, err = _run(["eval", SMOKE, f"model.path={tiny_model_dir}", "--checkpoint", str(tmp_path)], capsys)
    assert code == 2 and "neither a checkpoint (learner/learner_state.pt), a saved model" in err


# ---------------------------------------------------------------------------- failures once the run has started
REWARDS = '''
def broken(batch):
    raise KeyError("tests")
'''


def _failing_train(monkeypatch, fail) -> None:
    """`loop.train` replaced by `fail(cfg)`: preflight and the CLI's handling stay real."""
    from rlplat.driver import loop

    monkeypatch.setattr(loop, "train", lambda cfg, **_: fail(cfg))


def test_reward_that_raises_is_one_line_exit_2_and_keeps_the_samples(monkeypatch, capsys, tiny_model_dir: Path,
                                                                    tmp_path: Path) -> None:
    """The real scoring path (Experience.produce on a fake rollout): one line naming the function and where the
    step's unscored samples are, exit 2, the traceback in OUTPUT/logs/error.log."""
    from types import SimpleNamespace

    from rlplat.driver import experience, run_state
    from rlplat.types import FinishReason, Group, Sample

    (tmp_path / "my_rewards.py").write_text(REWARDS)
    out = tmp_path / "out"

    def fail(cfg):
        tokens = experience.Tokens(cfg.model.path)
        sample = Sample(group_id=0, sample_index=0, prompt_id=0, prompt_token_ids=tokens.encode("12="), answer="3",
                        response_token_ids=tokens.encode("3"), finish_reason=FinishReason.STOP)
        groups = [Group(group_id=0, prompt_id=0, samples=[sample])]
        rollout = SimpleNamespace(collect=lambda step, version, *_: (groups, {}))
        exp = experience.Experience(cfg=cfg, workers=SimpleNamespace(reward=None), tokens=tokens, prompts=None,
                                    rollout=rollout,
                                    save_unscored=lambda step, groups: run_state.save_unscored(out, step, groups))
        exp.produce(0, 0)

    _failing_train(monkeypatch, fail)
    code, err = _run(["train", SMOKE, f"model.path={tiny_model_dir}", f"experiment.output_dir={out}",
                      f"reward.terms=[{{name: {tmp_path / 'my_rewards.py'}:broken}}]"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"reward function '{tmp_path / 'my_rewards.py'}:broken' raised KeyError: 'tests'" in err
    assert f"the step's samples are saved in {out / 'unscored' / 'step_000001.json'}" in err
    assert err.endswith(f"(traceback: {out / 'logs' / 'error.log'})")
    assert (out / "unscored" / "step_000001.json").is_file()
    assert "Traceback" in (out / "logs" / "error.log").read_text()


def test_reward_failure_raised_by_the_async_producer_is_exit_2(monkeypatch, capsys, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    from rlplat.rewards.registry import RewardError

    def fail(cfg):
        try:
            raise RewardError("reward function 'r.py:f' returned nan for sample 0 (1 of 16 non-finite)")
        except RewardError as e:
            raise RuntimeError(f"rollout producer failed: RewardError: {e}") from e

    _failing_train(monkeypatch, fail)
    code, err = _run(["train", SMOKE, f"model.path={tiny_model_dir}", f"experiment.output_dir={tmp_path}"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("rlplat: error: rollout producer failed: RewardError: reward function 'r.py:f' returned nan")


def test_other_failure_is_one_line_exit_1(monkeypatch, capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    def fail(cfg):
        raise TimeoutError("train step: no answer within 8 s (cluster.call_timeout_s); the actor is hung")

    _failing_train(monkeypatch, fail)
    code, err = _run(["train", SMOKE, f"model.path={tiny_model_dir}", f"experiment.output_dir={tmp_path}"], capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("rlplat: error: train step: no answer within 8 s (cluster.call_timeout_s)")


def test_learner_out_of_gpu_memory_is_one_line_with_what_to_change(monkeypatch, capsys, tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    """The learner actor's CUDA OOM reaches the driver as Ray's task error (an instance of both); the line names
    torch's figures and the spec keys to change, with their values, instead of Ray's traceback."""
    import torch
    from ray.exceptions import RayTaskError

    torch_message = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
                     "which 1.02 GiB is free. Including non-PyTorch memory, this process has 78.17 GiB in use.")

    def fail(cfg):
        raise RayTaskError("LearnerActor.train", "Traceback (most recent call last):\n  File learner.py\n",
                           torch.OutOfMemoryError(torch_message)).as_instanceof_cause()

    _failing_train(monkeypatch, fail)
    code, err = _run(["train", SMOKE, f"model.path={tiny_model_dir}", f"experiment.output_dir={tmp_path}",
                      "learner.micro_batch_size_in_tokens=16384", "placement.colocate=true",
                      "rollout.gpu_memory_utilization=0.35"], capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("rlplat: error: out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 "
                          "has a total capacity of 79.19 GiB of which 1.02 GiB is free.): lower "
                          "learner.micro_batch_size_in_tokens (now 16384); set learner.activation_checkpointing: "
                          "true; give the engine less of the GPU: rollout.gpu_memory_utilization (now 0.35), or let "
                          "it sleep while the learner trains: rollout.sleep_level: 1; or shard the learner over more "
                          "GPUs: learner.num_ranks; no checkpoint was written yet (traceback: "), err
    assert "Traceback" not in err


def test_learner_dying_in_checkpoint_save_names_the_checkpoint_to_resume_from(ray_session, monkeypatch, capsys,
                                                                             tiny_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    """A real actor process that exits inside `Workers.save_learner_state`: one line naming the phase and the last
    complete checkpoint (step 2, which has a manifest; step 4 was being written), exit 1."""
    from rlplat import checkpoint as ck
    from rlplat.driver.workers import Workers

    out = tmp_path / "out"
    done = ck.checkpoint_root(out) / "step_000002"
    done.mkdir(parents=True)
    (done / ck.MANIFEST).write_text("{}")
    (ck.checkpoint_root(out) / "step_000004").mkdir()  # begun, never committed

    class LearnerActor:  # defined here, so Ray ships it by value to the worker
        def save_state(self, out_dir: str) -> None:
            os._exit(1)

    def fail(cfg):
        actor = ray_session.remote(num_cpus=0, max_restarts=0)(LearnerActor).remote()
        Workers(rollout=[], learner=actor, call_timeout_s=60).save_learner_state(out / "checkpoints" / "tmp")

    _failing_train(monkeypatch, fail)
    code = main(["train", SMOKE, f"model.path={tiny_model_dir}", f"experiment.output_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"rlplat: error: a Ray actor (LearnerActor) died during checkpoint save; resume from {done} "
                          "with `rlplat train SPEC --resume`"), err
