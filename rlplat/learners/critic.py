"""The PPO critic: a value model on the policy's architecture, GAE over response tokens, clipped value loss.

The value model is `AutoModelForTokenClassification(num_labels=1)` loaded from the policy checkpoint: the same
backbone (a separate copy, trained by its own AdamW) with a scalar head per position, as verl's critic. The head is
zero-initialised, so V = 0 at the start and the first advantages are plain Monte-Carlo returns; the head's dropout
is off. V(s_t) is read at the position that predicts response token t, aligned with the policy's log-probs.

Advantages are token-level and need values, so they are computed here, in the learner, not in the controller:
token rewards = outcome reward on the last response token (minus the optional in-reward KL on every token),
then `algos.advantages.gae`, then `whiten` over all response tokens of the batch.

FSDP (`ranks.sharded`): the value model is sharded like the policy; the whitening statistics, the value-loss count
and the metrics are summed over the ranks, the gradient norm is the global one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import Tensor

from rlplat.algos.advantages import gae, whiten
from rlplat.algos.kl import kl_penalized_rewards
from rlplat.algos.losses import value_loss
from rlplat.config import GaeConfig, LearnerConfig
from rlplat.learners import sharded as fsdp_learner
from rlplat.learners.fsdp import clip_grad_norm
from rlplat.learners.microbatch import MicroBatch
from rlplat.learners.ranks import ONE_PROCESS, Ranks


class Critic:
    def __init__(
        self, model_path: str, cfg: GaeConfig, learner: LearnerConfig, *, device: torch.device,
        autocast: Callable[[], AbstractContextManager[None]], ranks: Ranks = ONE_PROCESS,
    ) -> None:
        from transformers import AutoConfig, AutoModelForTokenClassification

        self.cfg, self.device, self.autocast, self.ranks = cfg, device, autocast, ranks
        config = AutoConfig.from_pretrained(model_path, num_labels=1)
        config.classifier_dropout = 0.0  # GenericForTokenClassification defaults to 0.1 on the head
        model = AutoModelForTokenClassification.from_pretrained(
            model_path, config=config, dtype=torch.float32, attn_implementation=learner.attn_implementation)
        with torch.no_grad():
            model.score.weight.zero_()
            if model.score.bias is not None:
                model.score.bias.zero_()
        if learner.activation_checkpointing:
            model.gradient_checkpointing_enable()
        self.model = model.to(device).train()
        if ranks.sharded:
            self.model = fsdp_learner.shard(self.model, compute_dtype=torch.float32,
                                            cpu_offload=learner.fsdp_cpu_offload)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.critic_lr or learner.lr, betas=learner.betas,
            weight_decay=learner.weight_decay, fused=device.type == "cuda" and learner.fused_optimizer)
        self.grad_clip_norm = learner.grad_clip_norm

    def values(self, mb: MicroBatch) -> Tensor:
        """V(s_t): [b, L-1] f32 at the position predicting each token (grad enabled if the caller allows)."""
        with self.autocast():
            out = self.model(input_ids=mb.input_ids)  # right padding + causal attention: no mask needed
        return out.logits[:, :-1, 0].float()

    def advantages(
        self, micro: list[MicroBatch], logp_old: list[Tensor], logp_ref: list[Tensor] | None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], dict[str, float]]:
        """GAE for every micro-batch; returns (adv, returns, values_old, metrics), tensors [b, L-1] f32."""
        cfg = self.cfg
        values, advs, rets = [], [], []
        kl_sum, tokens = 0.0, 0.0
        for k, mb in enumerate(micro):
            with torch.no_grad():
                v = self.values(mb)
            rewards = mb.reward_tok
            if cfg.kl_in_reward_coef > 0:
                assert logp_ref is not None, "in-reward KL needs reference log-probs"
                rewards = kl_penalized_rewards(rewards, logp_old[k], logp_ref[k], mb.resp_mask,
                                               coef=cfg.kl_in_reward_coef, kind=cfg.kl_in_reward_kind)
                kl_sum += float((mb.reward_tok - rewards).sum()) / cfg.kl_in_reward_coef
            tokens += float(mb.resp_mask.sum())
            adv, ret = gae(rewards, v, mb.resp_mask, gamma=cfg.gamma, lam=cfg.lam)
            values.append(v)
            advs.append(adv)
            rets.append(ret)
        sums = self.ranks.sum_each({"tokens": tokens, "kl": kl_sum, "values": _masked_sum(values, micro),
                                    "returns": _masked_sum(rets, micro)})
        tokens = sums["tokens"]
        if cfg.whiten and tokens > 1:
            advs = _whiten_all(advs, [mb.resp_mask for mb in micro], self.ranks)
        metrics = {"critic/value_old_mean": sums["values"] / max(1.0, tokens),
                   "critic/return_mean": sums["returns"] / max(1.0, tokens)}
        if cfg.kl_in_reward_coef > 0:
            metrics["train/kl_in_reward"] = sums["kl"] / max(tokens, 1.0)
        return advs, rets, values, metrics

    def update(self, micro: list[MicroBatch], values_old: list[Tensor], returns: list[Tensor]) -> dict[str, float]:
        """One optimizer step of the clipped value loss (token-mean over the mini-batch)."""
        count = self.ranks.agg_count("token-mean", [mb.resp_mask for mb in micro])
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss/value": 0.0, "critic/value_clip_frac": 0.0, "critic/value_mean": 0.0}
        for k, mb in enumerate(micro):
            v = self.values(mb)
            loss, m = value_loss(v, values_old[k], returns[k], mb.resp_mask, clip=self.cfg.value_clip,
                                 agg="token-mean", global_count=count)
            loss.backward()
            weight = float(mb.resp_mask.sum()) / count
            sums["loss/value"] += float(loss.detach())
            sums["critic/value_clip_frac"] += weight * float(m["clip_frac"])
            sums["critic/value_mean"] += weight * float(m["value_mean"])
        sums = self.ranks.sum_each(sums)
        sums["critic/grad_norm"] = clip_grad_norm(self.model.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        return sums

    def save(self, out_dir: str | Path) -> None:
        if self.ranks.sharded:
            fsdp_learner.save_full_model(self.model, out_dir, self.ranks.rank)
        else:
            self.model.save_pretrained(str(out_dir), safe_serialization=True)


def _whiten_all(advs: list[Tensor], masks: list[Tensor], ranks: Ranks = ONE_PROCESS) -> list[Tensor]:
    """Whiten advantages over the response tokens of every micro-batch together (one mean/std per batch; over every
    rank's tokens when distributed)."""
    flat = torch.cat([a.reshape(-1) for a in advs])
    flat_mask = torch.cat([m.reshape(-1) for m in masks])
    white = whiten(flat, flat_mask) if not ranks.distributed else _whiten_global(flat, flat_mask, ranks)
    out, start = [], 0
    for a in advs:
        out.append(white[start : start + a.numel()].view_as(a))
        start += a.numel()
    return out


def _whiten_global(x: Tensor, mask: Tensor, ranks: Ranks) -> Tensor:
    """`whiten(x, mask)` with the mean and the Bessel-corrected variance over every rank's masked entries (two
    all-reduces: n and sum(x), then sum((x - mu)^2)), as `algos.advantages.whiten` computes them on one rank."""
    s = ranks.sum_each({"n": float(mask.sum()), "sx": float((x * mask).sum())})
    mu = s["sx"] / s["n"]
    var = ranks.sum(float((((x - mu) ** 2) * mask).sum())) / (s["n"] - 1)
    out = (x - mu) * torch.rsqrt(torch.tensor(var + 1e-8, dtype=x.dtype))
    return torch.where(mask > 0, out, torch.zeros_like(out))


def _masked_sum(xs: list[Tensor], micro: list[MicroBatch]) -> float:
    return sum(float((x * mb.resp_mask).sum()) for x, mb in zip(xs, micro, strict=True))
