"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the learner: wrapping, global-norm clipping, the global loss
count, and a bucketed full-weight gather for weight sync. torch's own sharding only; nothing here is home-made.

Layout: every decoder layer (the model's `_no_split_modules` classes, e.g. `Qwen2DecoderLayer`) is one FSDP unit,
then the root: embeddings, final norm and the (possibly tied) LM head form the root's unit. Parameters are DTensors
sharded on dim 0 over the mesh; a unit is all-gathered for its forward and backward and resharded after.

Numerics: the model is loaded in fp32 and stays the fp32 master copy (the optimizer updates fp32 shards). With
`compute_dtype=torch.bfloat16` the gathered parameters are cast to bf16 for compute, and gradients are reduced in
fp32 (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`). On CPU, keep fp32 compute.

Gradients are SUMMED over ranks (divide factor 1), not averaged: each rank divides its summed loss by the global
count (`rlplat.learners.balance`), so the sum of the ranks' gradients is the gradient of the whole-batch loss.

All functions that touch DTensors are collectives: every rank of the mesh must call them in the same order.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from rlplat.learners.lora import is_peft_model

T = TypeVar("T")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules whose class is named in the transformers model's `_no_split_modules`
    (found through a peft wrapper too). Raises ValueError when the model names none or none is found."""
    hf = model.get_base_model() if is_peft_model(model) else model  # type: ignore[operator]
    names = set(getattr(hf, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(hf).__name__} names no decoder-layer class (_no_split_modules={sorted(names)}) "
                         "or none of them is in the model: cannot choose FSDP units")
    return layers


def shard_model(
    model: nn.Module,
    mesh: DeviceMesh | None = None,
    *,
    compute_dtype: torch.dtype = torch.float32,
    reduce_dtype: torch.dtype = torch.float32,
    cpu_offload: bool = False,
    activation_checkpointing: bool = False,
    reshard_after_forward: bool = True,
) -> FSDPModule:
    """Shard `model` in place with FSDP2, one unit per decoder layer and one for the root; returns it (now also an
    FSDPModule). Call after LoRA is applied (peft) and before the optimizer is built. A frozen model (a KL
    reference: `requires_grad_(False)` first) is sharded the same way and holds only its shards between forwards.

    mesh: a 1-D DeviceMesh over the learner ranks (None: the default process group, on the current device).
    compute_dtype: dtype of the gathered parameters in forward/backward (bf16 on GPU; fp32 on CPU).
    reduce_dtype: dtype of the gradient reduce-scatter (fp32 keeps the reduction exact in fp32 master terms).
    cpu_offload: shards, gradients and the optimizer step live in CPU memory (FSDP2's CPUOffloadPolicy; GPU only).
        Start the process group with backend "cpu:gloo,cuda:nccl" then: clipping and the full-weight gather run
        collectives on the CPU shards (checked on one H100 with one rank only).
    activation_checkpointing: recompute each decoder layer in backward (transformers' non-reentrant checkpointing,
        as the single-GPU learner does, so parameter names stay unchanged).
    Raises ValueError when the master weights are not fp32.
    """
    bad = {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
    if bad:
        raise ValueError(f"FSDP master weights must be float32 (load the model in fp32; compute_dtype sets the "
                         f"compute precision), found {sorted(bad)}")
    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=reduce_dtype)
    offload: OffloadPolicy = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=offload,
                    reshard_after_forward=reshard_after_forward)
    # The root's unit runs first in backward, so resharding it after forward would only re-gather it at once; a
    # frozen model (the KL reference, forward only) has no backward to reshard it, so it reshards after forward.
    trains = any(p.requires_grad for p in model.parameters())
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload,
                reshard_after_forward=reshard_after_forward and not trains)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            # Sum over ranks (losses carry global denominators). Forcing plain SUM collectives avoids NCCL's
            # PreMulSum, which gloo lacks, and costs nothing with a factor of 1.
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    assert isinstance(model, FSDPModule)
    return model


def all_reduce_sum(value: float, group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu") -> float:
    """The sum of `value` over the ranks of `group` (the global loss count from each rank's local count, or the
    summed loss for logging). A collective."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return float(t.item())


def all_reduce_max(value: int, group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu") -> int:
    """The largest `value` over the ranks of `group`. Every rank must run the same number of forward/backward
    passes (each is a series of FSDP collectives): ranks agree on max(micro-batches) and a rank with fewer runs
    zero-weight passes (loss * 0) for the rest. A collective."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip the gradients of (sharded) parameters by their GLOBAL L2 norm and return that norm, the same number on
    every rank. `torch.nn.utils.clip_grad_norm_` reduces DTensor gradients over the mesh itself; the returned norm
    is a DTensor, made a plain float here. A collective."""
    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm)


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor of a (possibly sharded) parameter, detached; a collective for DTensors."""
    t = t.detach()
    return t.full_tensor() if isinstance(t, DTensor) else t


@dataclass
class GatherStats:
    """What one bucketed gather did: buckets yielded, total bytes of full tensors, and the largest bucket (the
    peak extra memory on each rank while the consumer holds one bucket at a time)."""

    num_buckets: int = 0
    total_bytes: int = 0
    peak_bytes: int = 0

    def metrics(self) -> dict[str, float]:
        return {"sync/num_buckets": float(self.num_buckets), "sync/gather_bytes": float(self.total_bytes),
                "sync/peak_extra_bytes": float(self.peak_bytes)}


def _base_entries(model: nn.Module) -> list[tuple[str, Tensor, list[Tensor], float]]:
    """(name as the engine knows it, base tensor, [lora_A, lora_B] or [], scaling) in state-dict order.

    Plain models: every state-dict entry. peft LoRA: the base model's names, `X.base_layer.weight` becomes
    `X.weight` with its active adapter's A and B to merge (W + scaling * B @ A), adapter tensors skipped.
    """
    if not is_peft_model(model):
        return [(k, v, [], 0.0) for k, v in model.state_dict().items()]
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()  # type: ignore[operator]
    lora: dict[str, tuple[list[Tensor], float]] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            active = [a for a in module.active_adapters if a in module.lora_A]
            if not active:  # adapters disabled here: the base weight as it is
                continue
            if len(active) > 1 or getattr(module, "fan_in_fan_out", False) or module.use_dora.get(active[0], False):
                raise ValueError(f"{name}: the sharded gather merges one plain LoRA adapter per layer "
                                 f"(active {active}, no DoRA, no fan_in_fan_out)")
            a = active[0]
            lora[f"{name}.weight"] = ([module.lora_A[a].weight, module.lora_B[a].weight], float(module.scaling[a]))
    out = []
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        ab, scaling = lora.get(clean, ([], 0.0)) if key.endswith(".base_layer.weight") else ([], 0.0)
        out.append((clean, value, ab, scaling))
    return out


def iter_full_weights(
    model: nn.Module, *, bucket_bytes: int, stats: GatherStats | None = None
) -> Iterator[list[tuple[str, Tensor]]]:
    """Buckets of (name, full tensor) covering the model's whole state dict under the names the engine knows (the
    base model's, LoRA merged in as `lora.merged_state_dict` does), gathered parameter by parameter in state-dict
    order (so layer by layer) and yielded once a bucket reaches `bucket_bytes`; one tensor larger than that is a
    bucket of its own. Only one bucket is held at a time if the consumer lets each go before asking for the next.

    Every rank must drain the generator (each parameter is an all-gather); each rank receives the full tensors.
    Tied weights (embed_tokens / lm_head) are gathered once and yielded under both names. `stats`, when given, is
    filled in as the gather goes. Raises ValueError for bucket_bytes <= 0.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    stats = stats if stats is not None else GatherStats()
    bucket: list[tuple[str, Tensor]] = []
    size = 0
    seen: dict[int, Tensor] = {}  # id(sharded tensor) -> full tensor, for tied weights within a bucket
    for name, value, ab, scaling in _base_entries(model):
        full = seen.get(id(value))
        if full is None:
            full = full_tensor(value)
            if ab:
                a, b = (full_tensor(t) for t in ab)
                full = full + (b @ a * scaling).to(full.dtype)
            seen[id(value)] = full
            size += full.numel() * full.element_size()
        bucket.append((name, full))
        if size >= bucket_bytes:
            yield from _emit(bucket, size, stats)
            bucket, size, seen = [], 0, {}
    if bucket:
        yield from _emit(bucket, size, stats)


def _emit(bucket: list[tuple[str, Tensor]], size: int, stats: GatherStats) -> Iterator[list[tuple[str, Tensor]]]:
    stats.num_buckets += 1
    stats.total_bytes += size
    stats.peak_bytes = max(stats.peak_bytes, size)
    yield bucket


def full_weight_shapes(model: nn.Module) -> list[tuple[str, list[int]]]:
    """(name, full shape) of every entry `iter_full_weights` yields, in the same order, without gathering anything
    (a DTensor knows its global shape): what a receiver allocates before a bucketed broadcast. Not a collective."""
    return [(name, list(value.shape)) for name, value, _, _ in _base_entries(model)]


def enable_root_calls(model: nn.Module) -> None:
    """Let `root_call(model, fn)` run `fn` under the root FSDP unit's forward hooks (its parameters gathered, the
    backward reduce-scatter registered), as for `model(...)`. The learner calls the decoder and the LM head itself
    (the fused head reads `lm_head.weight`), which bypasses the root's `forward`; FSDP2's
    `register_fsdp_forward_method` is torch's way to hook another method."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    model.rlplat_root_call = types.MethodType(lambda self, fn: fn(), model)  # type: ignore[assignment]
    register_fsdp_forward_method(model, "rlplat_root_call")


def root_call(model: nn.Module, fn: Callable[[], T]) -> T:
    """fn() with the root unit's parameters gathered (a model without FSDP: just fn()). fn takes no arguments so
    no float tensor of ours passes FSDP's input casting."""
    call = getattr(model, "rlplat_root_call", None)
    if call is None:
        return fn()
    with warnings.catch_warnings():  # the learner's log-probs are views; it never changes them in place
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        return call(fn)
