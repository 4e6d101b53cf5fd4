"""Weight layout helpers shared by the learner and the rollout engines: safetensors bytes, checksums, and vLLM's
fused parameter layout. Neutral ground below learners/ and rollout/ (neither imports the other): torch,
safetensors and the standard library only.
"""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import save as save_safetensors


def state_dict_to_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """Serialise a state dict for the engines' `WeightSyncExtension.load_weights_from_bytes`. Tied `lm_head.weight`
    must already be dropped."""
    return save_safetensors({k: v.detach().contiguous().cpu() for k, v in state_dict.items()})


def weights_checksum(named: dict[str, torch.Tensor] | list[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, float32 bytes) of tensors sorted by name: equal iff every weight is bit-equal in fp32."""
    items = sorted(named.items() if isinstance(named, dict) else named)
    h = hashlib.sha256()
    for name, tensor in items:
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


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
