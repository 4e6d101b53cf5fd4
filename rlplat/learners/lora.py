"""LoRA through peft: wrap a causal LM, and read its merged weights under the base model's own names.

Only the adapter parameters train. The rollout engine knows nothing about LoRA: every sync sends
W + scaling * B @ A for each adapted linear under the base checkpoint's names (`model.layers.0.self_attn.q_proj
.weight`, no `base_model.model.` / `.base_layer` / `lora_` names), computed without touching the live modules
(peft's in-place merge/unmerge would round the base weights in bf16). The adapter-disabled model is the frozen
reference policy, so LoRA needs no second model copy for KL.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlplat.config import LoraConfig


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """Wrap `model` in a peft LoRA model; base weights are frozen, adapters (B = 0 at start) are trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)  # type: ignore[arg-type]


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def merged_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """The base model's state dict with every active LoRA adapter merged in (detached, base-model names)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()  # type: ignore[operator]
    merged: dict[str, Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight.detach()
            delta = sum((module.get_delta_weight(a).detach() for a in module.active_adapters
                         if a in module.lora_A), torch.zeros_like(weight))
            merged[f"{name}.weight"] = weight + delta.to(weight.dtype)
    out: dict[str, Tensor] = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        out[clean] = merged.get(clean, value.detach())
    return out
