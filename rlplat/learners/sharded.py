"""The PolicyLearner's FSDP2 pieces: sharding its models, the engine's weights gathered from shards in buckets, the
final model export, and sharded learner checkpoints (DCP). The sharding itself is `rlplat.learners.fsdp`.

Every function that touches a sharded model is a collective: every learner rank calls it, in the same order.
Rank 0 is the one that sends weights to the engines and writes files only it needs to write.

Checkpoint layout (inside the learner folder of the run's atomic checkpoint directory):
    policy/       DCP: model + optimizer shards of every rank, extra.json {policy_version, scheduler}
    critic/       DCP: the value model + its optimizer (PPO)
    rng_rank{r}.pt  rank r's Python/NumPy/torch generator states (tensors and plain data: weights_only loads)
A checkpoint resumes on the same number of ranks or another, sharded or not (DCP reshards on load).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlplat import checkpoint as ck
from rlplat.learners.dcp import load_sharded, save_sharded
from rlplat.learners.fsdp import (
    GatherStats,
    enable_root_calls,
    full_weight_shapes,
    iter_full_weights,
    shard_model,
)

POLICY_DIR, CRITIC_DIR = "policy", "critic"


def shard(model: nn.Module, *, compute_dtype: torch.dtype, cpu_offload: bool) -> nn.Module:
    """FSDP2 per decoder layer plus the root (fp32 master weights, fp32 gradient reduction), with root calls enabled
    so the learner can run its own decoder + fused-head forward under the root's hooks."""
    sharded = shard_model(model, compute_dtype=compute_dtype, cpu_offload=cpu_offload)
    enable_root_calls(sharded)
    return sharded


def frozen_reference(model_path: str, *, attn_implementation: str, device: torch.device,
                     compute_dtype: torch.dtype, cpu_offload: bool) -> nn.Module:
    """The KL reference policy as a second, frozen, sharded model (the one-rank learner swaps a snapshot into the
    live parameters instead; with DTensor shards a separate model is the plain way). Holds only its shards between
    forwards."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                 attn_implementation=attn_implementation)
    model = model.to(device).train().requires_grad_(False)
    return shard(model, compute_dtype=compute_dtype, cpu_offload=cpu_offload)


def engine_buckets(model: nn.Module, *, bucket_bytes: int, dtype: torch.dtype, tied: bool,
                   stats: GatherStats | None = None) -> Iterator[list[tuple[str, Tensor]]]:
    """Buckets of (name, full tensor in the engine's dtype) as the engine knows them (LoRA merged, a tied
    `lm_head.weight` left out), gathered layer by layer. Every rank must drain it."""
    for bucket in iter_full_weights(model, bucket_bytes=bucket_bytes, stats=stats):
        out = [(n, t.to(dtype)) for n, t in bucket if not (tied and n == "lm_head.weight")]
        if out:
            yield out


def engine_meta(model: nn.Module, *, dtype: torch.dtype, tied: bool) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of every tensor `engine_buckets` yields, in order, without a gather (not a collective)."""
    name = str(dtype).removeprefix("torch.")
    return [(n, name, shape) for n, shape in full_weight_shapes(model) if not (tied and n == "lm_head.weight")]


def save_full_model(model: nn.Module, out_dir: str | Path, rank: int) -> None:
    """`save_pretrained` of the whole model (a peft model: its adapter) from rank 0; the full state dict is gathered
    to rank 0's CPU memory. A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)  # type: ignore[operator]


def save_state(learner: Any, out_dir: str | Path) -> None:
    """Every rank writes its shards of the policy (and critic) with their optimizer states, and its RNG states."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"policy_version": learner.policy_version, "scheduler": learner.scheduler.state_dict()}
    save_sharded(learner.model, learner.optimizer, out / POLICY_DIR, extra=extra)
    if learner.critic is not None:
        save_sharded(learner.critic.model, learner.critic.optimizer, out / CRITIC_DIR)
    torch.save(ck.rng_state(), out / f"rng_rank{learner.ranks.rank}.pt")


def is_sharded_state(in_dir: str | Path) -> bool:
    return (Path(in_dir) / POLICY_DIR).is_dir()


def load_state(learner: Any, in_dir: str | Path) -> None:
    """Load a `save_state` folder on any number of ranks, into a sharded or a plain learner. RNG states: this
    rank's file if it has one (the same rank count), else rank 0's."""
    src = Path(in_dir)
    extra = load_sharded(learner.model, learner.optimizer, src / POLICY_DIR)
    learner.scheduler.load_state_dict(extra["scheduler"])
    learner.policy_version = int(extra["policy_version"])
    if learner.critic is not None:
        if not (src / CRITIC_DIR).is_dir():
            raise ValueError(f"{src} holds no critic state ({CRITIC_DIR}/) but the run trains a critic")
        load_sharded(learner.critic.model, learner.critic.optimizer, src / CRITIC_DIR)
    rank = getattr(getattr(learner, "ranks", None), "rank", 0)
    rng_file = src / f"rng_rank{rank}.pt"
    rng_file = rng_file if rng_file.is_file() else src / "rng_rank0.pt"
    rng = torch.load(rng_file, weights_only=True)
    ck.set_rng_state({**rng, "torch": rng["torch"].cpu()})
