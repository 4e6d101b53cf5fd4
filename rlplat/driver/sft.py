"""`rlplat sft SPEC`: supervised fine-tuning on chat conversations, the warm start before RL. In-process, no Ray.

1. `preflight(cfg)`: the model directory, the `sft:` files (loaded with HF datasets, rendered with the chat
   template, assistant tokens marked by rlplat.data.sft) and the step count; every bad input is a ConfigError
   (one line, exit 2 from the CLI) before the model loads.
2. `train_sft(cfg)`: an `SftLearner` (the policy learner's model, optimizer and LM head with the SFT loss) takes
   `sft.num_steps` steps of `sft.num_conversations_per_step` conversations drawn by a seeded `EpochCursor`; metrics
   go to the spec's MLflow run (loss/sft, eval/sft_loss, train/*, perf/*); checkpoints (`checkpoint.every_steps`)
   use rlplat.checkpoint's format under <output_dir>/sft_checkpoints, so `--resume` continues the cursor exactly.
3. The model directory `rlplat train` starts from (model.path): weights (LoRA merged), config, tokenizer, chat
   template and generation config, in `sft.save_dir` (default <output_dir>/sft_model); registered in MLflow.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlplat import checkpoint as ck
from rlplat.config import ConfigError, RunConfig, dump_yaml
from rlplat.data.datasets import EpochCursor, load_rows
from rlplat.data.sft import SftExamples, sft_examples
from rlplat.learners.sft import SftLearner
from rlplat.learners.state import load_learner_state, save_learner_state
from rlplat.models import check_model_dir, copy_model_files, max_context_length
from rlplat.tracking import Tracker

log = logging.getLogger("rlplat")
# Files of model.path that the trained weights replace; every other file (tokenizer files, chat template, generation
# config, license) is copied as it is, so the saved directory tokenizes exactly as model.path does.


@dataclass(frozen=True, slots=True)
class SftResult:
    run_id: str
    tracking_uri: str
    model_dir: Path  # the saved model directory (a model.path for `rlplat train`)
    history: dict[str, list[tuple[int, float]]]


@dataclass(frozen=True, slots=True)
class SftInputs:
    tokenizer: Any
    train: SftExamples
    eval: SftExamples | None
    num_steps: int


def checkpoint_root(cfg: RunConfig) -> Path:
    return cfg.output_dir / "sft_checkpoints"


def save_dir(cfg: RunConfig) -> Path:
    return Path(cfg.sft.save_dir) if cfg.sft.save_dir else cfg.output_dir / "sft_model"


def preflight(cfg: RunConfig, *, resume: bool = False) -> SftInputs:
    """Read and check everything before the model loads; ConfigError (one line naming the key) on bad input."""
    s = cfg.sft
    try:
        check_model_dir(cfg.model.path)
    except ValueError as e:
        raise ConfigError(f"model.path: {e}") from None
    if not s.train_files:
        raise ConfigError("sft.train_files: no conversation files given (write some with "
                          "`rlplat data countdown OUT --sft`)")
    try:
        if not resume:
            ck.check_fresh_start(checkpoint_root(cfg))
        elif ck.find_resumable(checkpoint_root(cfg)) is None:
            raise ValueError(f"--resume: no checkpoint in {checkpoint_root(cfg)}")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    max_tokens = s.max_tokens_per_conversation or max_context_length(cfg.model.path)
    train = _examples(s.train_files, "sft.train_files", tokenizer, s.messages_key, max_tokens)
    held_out = _examples(s.eval_files, "sft.eval_files", tokenizer, s.messages_key, max_tokens) if s.eval_files \
        else None
    num_steps = s.num_steps or max(1, math.ceil(s.num_epochs * len(train) / s.num_conversations_per_step))
    return SftInputs(tokenizer=tokenizer, train=train, eval=held_out, num_steps=num_steps)


def _examples(files: tuple[str, ...], key: str, tokenizer: Any, messages_key: str, max_tokens: int) -> SftExamples:
    try:
        rows = load_rows(list(files), prompt_key=messages_key)
        return sft_examples(rows, tokenizer, max_tokens=max_tokens)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def make_learner(cfg: RunConfig) -> SftLearner:
    s = cfg.sft
    learner_cfg = dataclasses.replace(
        cfg.learner, lr=s.lr, warmup_steps=s.warmup_steps,
        micro_batch_size_in_tokens=s.micro_batch_size_in_tokens or cfg.learner.micro_batch_size_in_tokens)
    return SftLearner(cfg.model.path, learner_cfg, dtype=cfg.model.dtype, seed=cfg.experiment.seed,
                      lora=cfg.model.lora)


def train_sft(cfg: RunConfig, *, resume: bool = False, inputs: SftInputs | None = None,
              report: Callable[[str], None] | None = print) -> SftResult:
    """The SFT run (module docstring). `report` gets a progress line now and then (None: silent)."""
    inputs = inputs or preflight(cfg, resume=resume)
    learner = make_learner(cfg)
    cursor = EpochCursor(len(inputs.train), seed=cfg.experiment.seed)
    start, run_id = 0, None
    if resume:
        start, run_id, cursor = _restore(cfg, learner, len(inputs.train))
    tracker = Tracker(cfg, run_id=run_id, tags={"rlplat.phase": "sft"})
    status = "FAILED"
    try:
        if start == 0:
            tracker.log_metrics(0, _data_metrics(inputs) | _eval(learner, inputs))
        for step in range(start + 1, inputs.num_steps + 1):
            metrics = _step(cfg, learner, inputs, cursor)
            if step == inputs.num_steps or (cfg.sft.eval_every_steps and step % cfg.sft.eval_every_steps == 0):
                metrics |= _eval(learner, inputs)
            tracker.log_metrics(step, metrics)
            if report and (step == inputs.num_steps or step % max(1, inputs.num_steps // 10) == 0):
                report(_progress_line(step, inputs.num_steps, metrics))
            every = cfg.checkpoint.every_steps
            if every and (step % every == 0 or step == inputs.num_steps):
                tracker.flush()
                _checkpoint(cfg, step, learner, cursor, tracker.run_id)
        out = save_model(cfg, learner)
        tracker.set_tag("rlplat.final_model_dir", str(out.resolve()))
        final = {k: v[-1][1] for k, v in tracker.history.items() if k in ("loss/sft", "eval/sft_loss")}
        tracker.register_model(out, cfg.tracking.registered_model_name or f"{cfg.experiment.name}-sft", final)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    return SftResult(run_id=tracker.run_id, tracking_uri=tracker.uri, model_dir=save_dir(cfg),
                     history=tracker.history)


def _step(cfg: RunConfig, learner: SftLearner, inputs: SftInputs, cursor: EpochCursor) -> dict[str, float]:
    t0 = time.perf_counter()
    batch = [inputs.train.samples[i] for i in cursor.take(cfg.sft.num_conversations_per_step)]
    metrics = learner.train_step(batch)
    seconds = time.perf_counter() - t0
    return metrics | {"perf/step_time_s": seconds, "perf/tokens_per_s": metrics["train/num_padded_tokens"] / seconds,
                      "train/epoch": cursor.epoch + cursor.position / cursor.num_rows}


def _eval(learner: SftLearner, inputs: SftInputs) -> dict[str, float]:
    return {} if inputs.eval is None else {"eval/sft_loss": learner.eval_loss(inputs.eval.samples)}


def _data_metrics(inputs: SftInputs) -> dict[str, float]:
    train = inputs.train
    return {"data/num_conversations": float(len(train)), "data/num_dropped_overlong": float(train.num_dropped),
            "data/num_trained_tokens": float(train.num_trained_tokens)}


def _progress_line(step: int, num_steps: int, m: dict[str, float]) -> str:
    held_out = f"  eval loss {m['eval/sft_loss']:.3f}" if "eval/sft_loss" in m else ""
    return (f"sft step {step}/{num_steps}  loss {m['loss/sft']:.3f}{held_out}  epoch {m['train/epoch']:.2f}  "
            f"{m['perf/step_time_s']:.2f} s/step")


def save_model(cfg: RunConfig, learner: SftLearner) -> Path:
    """A complete model directory: the trained weights and config (LoRA merged), and model.path's other files
    byte for byte: tokenizer files, chat template, generation config (vLLM reads its stop tokens there). The
    tokenizer is copied, not re-saved: transformers may save a loaded tokenizer under another class."""
    out = save_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    learner.save(str(out))
    copy_model_files(cfg.model.path, out)
    return out


def _checkpoint(cfg: RunConfig, step: int, learner: SftLearner, cursor: EpochCursor, run_id: str) -> Path:
    root = checkpoint_root(cfg)
    tmp = ck.begin(root, step)
    save_learner_state(learner.policy, tmp / "learner")
    state = ck.DriverState(step=step, policy_version=learner.policy.policy_version, run_id=run_id,
                           cursor=cursor.state(), rng=ck.rng_state())
    return ck.commit(root, tmp, state, dump_yaml(cfg), keep_last=cfg.checkpoint.keep_last)


def _restore(cfg: RunConfig, learner: SftLearner, num_rows: int) -> tuple[int, str, EpochCursor]:
    """(step, MLflow run id, cursor) of the newest intact SFT checkpoint, its learner state loaded."""
    try:
        found = ck.find_resumable(checkpoint_root(cfg))
        if found is None:
            raise ValueError(f"--resume: no checkpoint in {checkpoint_root(cfg)}")
        path, state, _ = found
        load_learner_state(learner.policy, path / "learner")
        cursor = EpochCursor.from_state(state.cursor, num_rows=num_rows)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ck.set_rng_state(state.rng)
    log.info("resumed SFT from %s at step %d", path, state.step)
    return state.step, state.run_id, cursor
