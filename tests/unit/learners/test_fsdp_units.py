"""The FSDP helpers that need no process group: FSDP units, argument checks, the bucketed gather on a plain and a
LoRA model (same names and values as the single learner sends), and DCP save/load in one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlplat.config import LoraConfig
from rlplat.learners.dcp import load_sharded, save_sharded
from rlplat.learners.fsdp import GatherStats, decoder_layers, iter_full_weights, shard_model
from rlplat.learners.lora import apply_lora, merged_state_dict


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlplat.models import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


def _model(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def test_one_fsdp_unit_per_decoder_layer_through_peft(model_dir: Path) -> None:
    plain = _model(model_dir)
    assert [type(m).__name__ for m in decoder_layers(plain)] == ["Qwen2DecoderLayer"] * 2
    lora = apply_lora(_model(model_dir), LoraConfig(rank=2))
    assert len(decoder_layers(lora)) == 2
    with pytest.raises(ValueError, match="decoder-layer"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_master_weights_must_be_fp32(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="float32"):
        shard_model(_model(model_dir).to(torch.bfloat16))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gather_buckets_cover_the_state_dict_in_order(model_dir: Path, lora: bool) -> None:
    model = _model(model_dir)
    if lora:
        model = apply_lora(model, LoraConfig(rank=2, target_modules=("q_proj", "down_proj")))
        for name, p in model.named_parameters():  # B = 0 at start: make the merge visible
            if "lora_B" in name:
                torch.nn.init.normal_(p)
    want = merged_state_dict(model) if lora else model.state_dict()
    stats = GatherStats()
    buckets = list(iter_full_weights(model, bucket_bytes=100_000, stats=stats))
    got = [kv for b in buckets for kv in b]
    assert [k for k, _ in got] == list(want)
    for k, v in got:
        torch.testing.assert_close(v, want[k], rtol=0, atol=1e-6, msg=k)
    assert stats.num_buckets == len(buckets) > 2
    held = [sum(v.nbytes for v in {id(v): v for _, v in b}.values()) for b in buckets]  # tied weights count once
    assert stats.peak_bytes == max(held) and stats.total_bytes == sum(held)
    assert all(h < 100_000 + max(v.nbytes for v in want.values()) for h in held)
    assert stats.metrics()["sync/peak_extra_bytes"] == stats.peak_bytes < stats.total_bytes
    with pytest.raises(ValueError, match="bucket_bytes"):
        next(iter_full_weights(model, bucket_bytes=0))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # one process, no group: intended
def test_dcp_round_trip_in_one_process_and_stale_temporaries(model_dir: Path, tmp_path: Path) -> None:
    model = _model(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=torch.tensor([[3, 4, 5]])).logits.sum().backward()
    opt.step()
    (tmp_path / ".tmp-ck").mkdir()  # a crashed save
    (tmp_path / ".tmp-ck" / "junk").write_text("x")
    out = save_sharded(model, opt, tmp_path / "ck", extra={"policy_version": 3})
    assert out == tmp_path / "ck" and not (tmp_path / ".tmp-ck").exists() and not (out / "junk").exists()
    save_sharded(model, opt, tmp_path / "ck", extra={"policy_version": 4})  # replaces the folder
    fresh = _model(model_dir)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    assert load_sharded(fresh, opt2, out) == {"policy_version": 4}
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=k)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    torch.testing.assert_close(s2[0]["exp_avg"], s1[0]["exp_avg"])
    with pytest.raises(ValueError, match="no sharded checkpoint"):
        load_sharded(fresh, opt2, tmp_path / "missing")
