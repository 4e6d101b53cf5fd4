"""FSDP2 learner pieces on real 2-rank gloo process groups on CPU, against the unsharded model on the same batch.

One run per variant (2 ranks full fine-tuning with activation checkpointing; 2 ranks LoRA; 4 ranks full) does two
optimizer steps with the batch split by tokens over the ranks, micro-batches accumulated on each rank (unequal
counts: the short rank runs zero-weight passes), global loss denominators, global-norm clipping and AdamW, gathers
the full weights in buckets after each step, and saves a DCP checkpoint between the steps. A 1-rank run then loads
that checkpoint (2 -> 1, 4 -> 1) and takes step 2 again, and the test process loads it into an unsharded model.
Everything is compared with one unsharded process.

Ranks are forked from the test process (start_method "fork"), which has torch and transformers imported already:
spawning would pay ~15 s of imports per rank on a busy 2-core machine. Each child uses one intra-op thread, so no
OpenMP pool crosses the fork; a rank that hangs fails the test after a deadline instead of stalling the suite.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torch.distributed.tensor import DTensor

from rlplat.algos.losses import aggregate
from rlplat.config import LoraConfig
from rlplat.learners.balance import balance_samples, global_agg_count, local_agg_count
from rlplat.learners.dcp import load_sharded, save_sharded
from rlplat.learners.fsdp import (
    GatherStats,
    all_reduce_max,
    all_reduce_sum,
    clip_grad_norm,
    iter_full_weights,
    shard_model,
)
from rlplat.learners.lora import apply_lora, merged_state_dict

LORA = LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"))
LR, MAX_NORM, BUCKET_BYTES = 1e-3, 0.2, 64 * 1024
MICRO_TOKENS = 16  # 2 ranks: rank 0 gets 2 micro-batches, rank 1 gets 3
ATOL = 1e-5


# ------------------------------------------------------------------------------------------------ shared pieces
def _batch() -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """ids [6, 12] int64 right-padded; mask [6, 11] f32 on the response; adv [6] f32; lengths per row."""
    g = torch.Generator().manual_seed(1)
    lengths = [12, 5, 9, 7, 11, 6]
    ids = torch.zeros(6, 12, dtype=torch.long)
    mask = torch.zeros(6, 11)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, 60, (n,), generator=g)
        mask[r, 2 : n - 1] = 1.0  # the response: predicted positions 2..n-2
    adv = torch.rand(6, generator=g) * 2 - 1
    return ids, mask, adv, lengths


def _loss(model: torch.nn.Module, ids: Tensor, mask: Tensor, adv: Tensor, count: float) -> Tensor:
    logits = model(input_ids=ids).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return aggregate(-logp * adv[:, None], mask, "token-mean", global_count=count)


def _load(model_dir: Path, lora: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)  # LoRA A's initialisation
    return apply_lora(model, LORA) if lora else model


def _critic(model_dir: Path) -> torch.nn.Module:
    """A PPO value model as `learners/critic.py` builds it (its score head seeded, not zeroed: so it learns)."""
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(0)
    return AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)


def _critic_step(critic: torch.nn.Module, rows: list[int], count: float) -> float:
    """One AdamW step of the clipped-norm value loss 0.5 (V - R)^2 on `rows` (R: the sample's advantage)."""
    ids, mask, adv, lengths = _batch()
    opt = _optimizer(critic)
    width = max(lengths[r] for r in rows)
    values = critic(input_ids=ids[rows, :width]).logits[:, :-1, 0].float()
    loss = aggregate(0.5 * (values - adv[rows, None]) ** 2, mask[rows, : width - 1], "token-mean", global_count=count)
    loss.backward()
    clip_grad_norm(critic.parameters(), MAX_NORM)  # plain or sharded parameters alike
    opt.step()
    return loss.item()


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(fn: Any, world: int, *args: Any, timeout_s: float = 240.0) -> None:
    """Fork `world` ranks of `fn(rank, world, port, *args)`; a rank's exception is raised here, a hang fails."""
    ctx = mp.start_processes(fn, args=(world, _free_port(), *args), nprocs=world, join=False, start_method="fork")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"{world} ranks of {fn.__name__} still running after {timeout_s:g} s (a collective hung?)")


# ------------------------------------------------------------------------------------------------ rank workers
def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _micro_batches(rows: list[int], lengths: list[int]) -> list[list[int]]:
    """Rows sorted by length, cut where rows x longest would pass MICRO_TOKENS (as learners/microbatch.py does)."""
    out: list[list[int]] = []
    for r in sorted(rows, key=lambda i: lengths[i]):
        if out and (len(out[-1]) + 1) * lengths[r] <= MICRO_TOKENS:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def _sharded_step(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, world: int) -> tuple[float, float]:
    """One update: this rank's share of the batch (by tokens) in micro-batches, gradients accumulated locally and
    reduced with the last pass; ranks with fewer micro-batches run zero-weight passes (FSDP collectives pair up)."""
    ids, mask, adv, lengths = _batch()
    micro = _micro_batches(balance_samples(lengths, world)[rank], lengths)
    count = global_agg_count("token-mean", [all_reduce_sum(local_agg_count("token-mean", [mask[m] for m in micro]))])
    rounds = all_reduce_max(len(micro))
    opt.zero_grad()
    total = 0.0
    for i in range(rounds):
        model.set_requires_gradient_sync(i == rounds - 1)  # type: ignore[operator]
        rows = micro[i] if i < len(micro) else micro[0][:1]
        width = max(lengths[r] for r in rows)  # each micro-batch pads to its own longest row
        loss = _loss(model, ids[rows, :width], mask[rows, : width - 1], adv[rows], count)
        if i >= len(micro):
            loss = loss * 0.0
        loss.backward()
        total += loss.item()
    norm = clip_grad_norm([p for p in model.parameters() if p.requires_grad], MAX_NORM)
    opt.step()
    return all_reduce_sum(total), norm


def _gather(model: torch.nn.Module) -> tuple[dict[str, Tensor], dict[str, float]]:
    stats = GatherStats()
    full: dict[str, Tensor] = {}
    for bucket in iter_full_weights(model, bucket_bytes=BUCKET_BYTES, stats=stats):
        full.update((k, v.clone()) for k, v in bucket)
    return full, stats.metrics()


def _train_worker(rank: int, world: int, port: int, model_dir: Path, out: Path, lora: bool) -> None:
    """Two sharded steps with a DCP save between them; rank r writes rank{r}.pt."""
    _init(rank, world, port)
    model = shard_model(_load(model_dir, lora), activation_checkpointing=not lora)
    opt = _optimizer(model)
    res: dict[str, Any] = {}
    res["loss1"], res["norm1"] = _sharded_step(model, opt, rank, world)
    res["w1"], res["stats"] = _gather(model)
    save_sharded(model, opt, out / "ckpt", extra={"step": 1})
    res["loss2"], res["norm2"] = _sharded_step(model, opt, rank, world)
    res["w2"], _ = _gather(model)
    if not lora:  # a PPO critic; a frozen KL reference; bf16 compute (fp32 master and reduction) over gloo
        ids, mask, adv, lengths = _batch()
        critic = shard_model(_critic(model_dir))
        rows = balance_samples(lengths, world)[rank]
        res["critic_loss"] = all_reduce_sum(_critic_step(critic, rows, all_reduce_sum(float(mask[rows].sum()))))
        res["critic_w"], _ = _gather(critic)
        frozen = shard_model(_load(model_dir, False).requires_grad_(False))
        bf16 = shard_model(_load(model_dir, False), compute_dtype=torch.bfloat16)
        with torch.no_grad():
            res["loss0_frozen"] = _loss(frozen, ids, mask, adv, float(mask.sum())).item()
            res["frozen_root_sharded"] = all(isinstance(p.data, DTensor) for p in frozen.parameters())
            res["loss0_bf16"] = _loss(bf16, ids, mask, adv, float(mask.sum())).item()
    torch.save(res, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def _resume_worker(rank: int, world: int, port: int, model_dir: Path, out: Path, lora: bool) -> None:
    """Load the checkpoint (on any number of ranks) and take step 2 again; writes resumed{r}.pt."""
    _init(rank, world, port)
    model = shard_model(_load(model_dir, lora))
    opt = _optimizer(model)
    res: dict[str, Any] = {"extra": load_sharded(model, opt, out / "ckpt")}
    res["w1"], _ = _gather(model)
    res["loss2"], res["norm2"] = _sharded_step(model, opt, rank, world)
    res["w2"], _ = _gather(model)
    torch.save(res, out / f"resumed{rank}.pt")
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ the reference
def _reference(model_dir: Path, lora: bool) -> dict[str, Any]:
    model = _load(model_dir, lora)
    opt = _optimizer(model)
    ids, mask, adv, _ = _batch()
    res: dict[str, Any] = {}
    with torch.no_grad():
        res["loss0"] = _loss(model, ids, mask, adv, float(mask.sum())).item()
    for step in (1, 2):
        opt.zero_grad()
        loss = _loss(model, ids, mask, adv, float(mask.sum()))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], MAX_NORM)
        opt.step()
        full = merged_state_dict(model) if lora else model.state_dict()
        res[f"loss{step}"], res[f"norm{step}"] = loss.item(), float(norm)
        res[f"w{step}"] = {k: v.detach().clone() for k, v in full.items()}
    if not lora:
        critic = _critic(model_dir)
        res["critic_loss"] = _critic_step(critic, list(range(len(ids))), float(mask.sum()))
        res["critic_w"] = {k: v.detach().clone() for k, v in critic.state_dict().items()}
    return res


def _assert_weights(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    assert list(got) == list(want)  # every name, in state-dict order
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=ATOL, msg=k)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlplat.models import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize(("world", "lora"), [
    pytest.param(2, False, id="2-full"),
    pytest.param(2, True, id="2-lora"),
    pytest.param(4, False, id="4-full", marks=pytest.mark.slow),  # ~16 s on 2 busy cores
])
def test_ranks_match_one_process_and_resume_on_one_rank(model_dir: Path, tmp_path: Path, world: int,
                                                         lora: bool) -> None:
    ref = _reference(model_dir, lora)
    _run_ranks(_train_worker, world, model_dir, tmp_path, lora)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    r0 = ranks[0]
    for step in (1, 2):
        assert r0[f"loss{step}"] == pytest.approx(ref[f"loss{step}"], abs=ATOL)
        for res in ranks:
            assert res[f"norm{step}"] == pytest.approx(ref[f"norm{step}"], abs=ATOL)
            _assert_weights(res[f"w{step}"], ref[f"w{step}"])  # every rank receives the full weights
    assert ref["norm1"] > MAX_NORM  # clipping was active, so the global norm mattered
    stats = r0["stats"]
    largest = max(v.numel() * v.element_size() for v in ref["w1"].values())
    assert stats["sync/num_buckets"] > 2 and stats["sync/peak_extra_bytes"] < BUCKET_BYTES + largest
    assert stats["sync/gather_bytes"] > 2 * stats["sync/peak_extra_bytes"]  # never the whole model at once
    if not lora:
        assert r0["critic_loss"] == pytest.approx(ref["critic_loss"], abs=ATOL)
        _assert_weights(r0["critic_w"], ref["critic_w"])
        assert r0["loss0_frozen"] == pytest.approx(ref["loss0"], abs=ATOL) and r0["frozen_root_sharded"]
        assert r0["loss0_bf16"] == pytest.approx(ref["loss0"], rel=5e-2)

    _run_ranks(_resume_worker, 1, model_dir, tmp_path, lora)  # 2 (or 4) -> 1 rank
    res = torch.load(tmp_path / "resumed0.pt")
    assert res["extra"] == {"step": 1}
    _assert_weights(res["w1"], ref["w1"])
    assert res["loss2"] == pytest.approx(ref["loss2"], abs=ATOL)
    _assert_weights(res["w2"], ref["w2"])  # the optimizer state came back too

    plain = _load(model_dir, lora)  # the sharded checkpoint also loads into an unsharded model, no process group
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        load_sharded(plain, _optimizer(plain), tmp_path / "ckpt")
    _assert_weights(merged_state_dict(plain) if lora else plain.state_dict(), ref["w1"])
