"""rlplat.weights: safetensors bytes, checksums and vLLM's fused layout, on CPU tensors."""

from __future__ import annotations

import torch
from safetensors.torch import load

from rlplat.weights import state_dict_to_bytes, to_engine_layout, weights_checksum


def _layer() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    names = ["q_proj", "k_proj", "v_proj", "o_proj"]
    sd = {f"model.layers.0.self_attn.{n}.weight": torch.randn(4, 4, generator=g) for n in names}
    sd |= {f"model.layers.0.mlp.{n}.weight": torch.randn(6, 4, generator=g) for n in ("gate_proj", "up_proj")}
    return sd | {"model.embed_tokens.weight": torch.randn(8, 4, generator=g)}


def test_state_dict_bytes_round_trip() -> None:
    sd = _layer()
    back = load(state_dict_to_bytes(sd))
    assert back.keys() == sd.keys()
    for name, t in sd.items():
        torch.testing.assert_close(back[name], t, rtol=0, atol=0)


def test_engine_layout_fuses_qkv_and_gate_up() -> None:
    sd = _layer()
    out = to_engine_layout(sd)
    assert sorted(out) == ["model.embed_tokens.weight", "model.layers.0.mlp.gate_up_proj.weight",
                           "model.layers.0.self_attn.o_proj.weight", "model.layers.0.self_attn.qkv_proj.weight"]
    attn = "model.layers.0.self_attn"
    torch.testing.assert_close(out[f"{attn}.qkv_proj.weight"],
                               torch.cat([sd[f"{attn}.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]))
    assert out["model.layers.0.mlp.gate_up_proj.weight"].shape == (12, 4)
    assert len(sd) == 7  # the input is not changed


def test_checksum_is_order_free_and_sees_every_bit() -> None:
    sd = _layer()
    assert weights_checksum(sd) == weights_checksum(list(reversed(list(sd.items()))))
    changed = dict(sd)
    changed["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"].clone()
    changed["model.embed_tokens.weight"][0, 0] += 1e-6
    assert weights_checksum(changed) != weights_checksum(sd)
    assert weights_checksum({k: v.to(torch.bfloat16).float() for k, v in sd.items()}) != weights_checksum(sd)
