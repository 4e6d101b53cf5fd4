"""`rlplat eval SPEC --checkpoint DIR`: turn what a run saved into a model directory a rollout engine can serve.

DIR may be
    a checkpoint            outputs/NAME/checkpoints/step_000010 (learner/learner_state.pt inside, or, from a run
                            with learner.num_ranks > 1, learner/policy/: every rank's DCP shards, gathered here
                            in one process), or the checkpoints/ folder itself (its newest intact checkpoint)
    a saved policy          outputs/NAME/final_model with full weights (config.json + *.safetensors)
    a LoRA adapter          outputs/NAME/final_model of a LoRA run (adapter_config.json)
The result is a Hugging Face directory under the eval output folder: full weights (LoRA merged into the spec's base
model), the base model's config and tokenizer files. The controller's `evaluate_checkpoint` serves it and logs the
MLflow evaluation run.

A checkpoint is checked against its manifest and read without pickle (`rlplat.checkpoint`,
`rlplat.learners.state`), so a checkpoint from elsewhere cannot run code; a damaged one is a one-line ConfigError.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from rlplat import checkpoint as ck
from rlplat.config import ConfigError, RunConfig
from rlplat.learners.state import read_learner_state

STATE_FILE = Path(ck.LEARNER_STATE)


@dataclass(frozen=True, slots=True)
class EvalSource:
    kind: str  # "checkpoint" | "model" | "adapter"
    path: Path
    step: int  # training step of a checkpoint; 0 when unknown (a saved model or adapter)
    trained_run_id: str  # the MLflow run that wrote a checkpoint; "" when unknown


def find_source(checkpoint: str | Path) -> EvalSource:
    """What kind of saved policy `checkpoint` is; ConfigError naming the path and the accepted layouts."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise ConfigError(f"--checkpoint: {path} is not a directory")
    state = None
    try:
        if ck.checkpoints(path):  # the checkpoints/ root: its newest intact one (a warning names any skipped)
            found = ck.find_resumable(path)
            assert found is not None  # None only for a root without checkpoint folders
            path, state = found[0], found[1]
        elif any((path / f).exists() for f in (ck.MANIFEST, ck.LEGACY_STATE, STATE_FILE)):
            ck.verify(path)
            state = ck.load_driver_state(path)
    except ValueError as e:
        raise ConfigError(f"--checkpoint: {e}") from None
    if state is not None:
        return EvalSource("checkpoint", path, state.step, state.run_id)
    if (path / "adapter_config.json").is_file():
        return EvalSource("adapter", path, 0, "")
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return EvalSource("model", path, 0, "")
    raise ConfigError(f"--checkpoint: {path} is neither a checkpoint (learner/learner_state.pt), a saved model "
                      f"(config.json + *.safetensors) nor a LoRA adapter (adapter_config.json)")


def load_policy_weights(model: torch.nn.Module, learner_dir: Path, base: Path, *, lora: bool) -> None:
    """The policy weights a checkpoint's learner folder holds (one file, or FSDP ranks' DCP shards) into `model`."""
    from rlplat.learners.dcp import load_model_weights
    from rlplat.learners.sharded import POLICY_DIR, is_sharded_state

    try:
        if is_sharded_state(learner_dir):
            load_model_weights(model, learner_dir / POLICY_DIR)
            return
        state = read_learner_state(learner_dir)
    except ValueError as e:
        raise ConfigError(f"--checkpoint: {e}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ConfigError(f"--checkpoint: {learner_dir.parent} does not fit the spec's model ({base}, lora: "
                          f"{lora}): {str(e).splitlines()[0]}") from None


def materialise(source: EvalSource, cfg: RunConfig, out_dir: Path) -> Path:
    """Write the policy of `source` as full weights + the base model's config and tokenizer into `out_dir`."""
    from transformers import AutoModelForCausalLM

    base = Path(cfg.model.path)
    if source.kind == "model":
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    elif source.kind == "adapter":
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, source.path).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        if cfg.model.lora is not None:
            from rlplat.learners.lora import apply_lora

            model = apply_lora(model, cfg.model.lora)
        load_policy_weights(model, source.path / STATE_FILE.parent, base, lora=cfg.model.lora is not None)
        if cfg.model.lora is not None:
            model = model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in base.iterdir():  # tokenizer files (and anything else the base has that the policy lacks)
        if f.is_file() and not (out_dir / f.name).exists() and not f.name.endswith((".safetensors", ".bin")):
            shutil.copy2(f, out_dir / f.name)
    return out_dir
