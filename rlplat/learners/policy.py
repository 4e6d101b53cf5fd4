"""The policy learner: a transformers causal LM + AdamW, trained with the losses in rlplat.algos.

Plain object (no Ray): `rlplat.actors.learner.LearnerActor` wraps one. One `train_step(batch)` call recomputes the
old log-probs with the current weights, then runs `num_updates_per_batch` optimizer steps over mini-batches of
whole groups, each split into micro-batches by a token budget (gradient accumulation).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rlplat.algos.kl import kl_estimate
from rlplat.algos.losses import POLICY_LOSS_FNS, aggregate, entropy_from_logits, logp_from_logits
from rlplat.config import AlgorithmConfig, LearnerConfig
from rlplat.rollout.weight_sync import state_dict_to_bytes, weights_checksum
from rlplat.types import Sample, TrainBatch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """Right-padded sequences. input_ids/attention: [b, L]; resp_mask/adv/logp_behaviour: [b, L-1] aligned with the
    predicted token at each position (position t predicts input_ids[:, t+1])."""

    input_ids: Tensor
    attention: Tensor
    resp_mask: Tensor
    adv: Tensor
    logp_behaviour: Tensor
    index: Tensor  # [b] positions of these samples in the batch


def make_micro_batches(samples: list[Sample], adv: list[float], token_budget: int) -> list[MicroBatch]:
    """Group samples (sorted by length) so that rows x padded length <= token_budget; padding stays minimal."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt_token_ids) + samples[i].num_response_tokens)
    chunks: list[list[int]] = []
    for i in order:
        length = len(samples[i].prompt_token_ids) + samples[i].num_response_tokens
        if chunks and (len(chunks[-1]) + 1) * length <= token_budget:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return [_collate([samples[i] for i in c], [adv[i] for i in c], c) for c in chunks]


def _collate(samples: list[Sample], adv: list[float], index: list[int]) -> MicroBatch:
    length = max(len(s.prompt_token_ids) + s.num_response_tokens for s in samples)
    b = len(samples)
    ids = torch.zeros(b, length, dtype=torch.long)
    att = torch.zeros(b, length, dtype=torch.long)
    mask = torch.zeros(b, length - 1)
    adv_t = torch.zeros(b, length - 1)
    lpb = torch.zeros(b, length - 1)
    for r, s in enumerate(samples):
        p, n = len(s.prompt_token_ids), s.num_response_tokens
        ids[r, : p + n] = torch.tensor(s.prompt_token_ids + s.response_token_ids)
        att[r, : p + n] = 1
        # Response token j sits at input position p + j and is predicted at position p + j - 1.
        mask[r, p - 1 : p - 1 + n] = torch.tensor(s.loss_mask, dtype=torch.float32)
        adv_t[r, p - 1 : p - 1 + n] = adv[r]
        lpb[r, p - 1 : p - 1 + n] = torch.tensor(s.logp_behaviour, dtype=torch.float32)
    return MicroBatch(ids, att, mask, adv_t, lpb, torch.tensor(index))


class PolicyLearner:
    def __init__(self, model_path: str, cfg: LearnerConfig, algo: AlgorithmConfig, *, dtype: str, seed: int) -> None:
        from transformers import AutoModelForCausalLM

        seed_everything(seed)
        self.cfg, self.algo = cfg, algo
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[dtype]).to(self.device)
        self.model.train()
        self.ref_model = None
        if algo.kl_coef > 0:
            self.ref_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[dtype]).to(self.device)
            self.ref_model.eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
        )
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.policy_version = 0

    # ---------------------------------------------------------------------------------------------------- train
    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One rollout batch -> `num_updates_per_batch` optimizer steps. Returns mean metrics; bumps the version."""
        batch.validate()
        micro = make_micro_batches(batch.samples, batch.advantages, self.cfg.micro_batch_size_in_tokens)
        logp_old = [self._logp(mb, self.model, grad=False) for mb in micro]
        logp_ref = [self._logp(mb, self.ref_model, grad=False) for mb in micro] if self.ref_model else None
        metrics: list[dict[str, float]] = []
        num_updates = self.algo.num_updates_per_batch
        for update in range(num_updates):
            chosen = [i for i in range(len(micro)) if i % num_updates == update] or list(range(len(micro)))
            metrics.append(self._update([micro[i] for i in chosen], [logp_old[i] for i in chosen],
                                        [logp_ref[i] for i in chosen] if logp_ref else None))
        self.policy_version += 1
        out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        out["train/policy_version"] = float(self.policy_version)
        return out

    def _update(self, micro: list[MicroBatch], logp_old: list[Tensor], logp_ref: list[Tensor] | None) -> dict[str, float]:
        algo = self.algo
        loss_fn = POLICY_LOSS_FNS[algo.policy_loss]
        count = _global_count(algo.loss_agg, [mb.resp_mask for mb in micro])
        norm_len = max(mb.resp_mask.shape[1] for mb in micro)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for k, mb in enumerate(micro):
            mask = mb.resp_mask.to(self.device)
            logits = self._logits(mb, self.model)
            logp = logp_from_logits(logits, mb.input_ids[:, 1:].to(self.device))
            loss, m = loss_fn(logp, logp_old[k], mb.adv.to(self.device), mask, clip_low=algo.clip_low,
                              clip_high=algo.clip_high, agg=algo.loss_agg, norm_len=norm_len, global_count=count)
            total = loss
            if logp_ref is not None:
                kl = aggregate(kl_estimate(logp, logp_ref[k], algo.kl_kind), mask, algo.loss_agg,
                               norm_len=norm_len, global_count=count)
                total = total + algo.kl_coef * kl
                _add(sums, "loss/kl_ref", float(kl))
            total.backward()
            weight = float(mask.sum()) / max(1.0, sum(float(x.resp_mask.sum()) for x in micro))
            _add(sums, "loss/policy", float(loss))
            with torch.no_grad():
                _add(sums, "train/entropy", weight * float((entropy_from_logits(logits) * mask).sum() / mask.sum().clamp(min=1)))
                _add(sums, "train/logp_diff_behaviour", weight * float(((logp - mb.logp_behaviour.to(self.device)).abs() * mask).sum() / mask.sum().clamp(min=1)))
            for name in ("clip_frac", "approx_kl", "ratio_mean"):
                _add(sums, f"train/{name}", weight * float(m[name]))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        sums["train/grad_norm"] = float(grad_norm)
        sums["train/lr"] = float(self.scheduler.get_last_lr()[0])
        return sums

    def _logits(self, mb: MicroBatch, model: torch.nn.Module) -> Tensor:
        out = model(input_ids=mb.input_ids.to(self.device), attention_mask=mb.attention.to(self.device))
        return out.logits[:, :-1].float()  # fp32 at the LM head

    def _logp(self, mb: MicroBatch, model: torch.nn.Module | None, *, grad: bool) -> Tensor:
        assert model is not None
        with torch.set_grad_enabled(grad):
            return logp_from_logits(self._logits(mb, model), mb.input_ids[:, 1:].to(self.device))

    # ---------------------------------------------------------------------------------------------------- weights
    def engine_state_dict(self) -> dict[str, Tensor]:
        """The weights a rollout engine needs (tied `lm_head.weight` dropped: vLLM ties it itself)."""
        sd = self.model.state_dict()
        if getattr(self.model.config, "tie_word_embeddings", False):
            sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        return sd

    def weights_bytes(self) -> bytes:
        return state_dict_to_bytes(self.engine_state_dict())

    def checksum(self) -> str:
        return weights_checksum(self.engine_state_dict())

    def sequence_logps(self, token_ids: list[int]) -> list[float]:
        """Log-prob of each token after the first (to compare against the engine's `score`)."""
        ids = torch.tensor([token_ids], device=self.device)
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[:, :-1].float()
        return logp_from_logits(logits, ids[:, 1:])[0].tolist()

    def save(self, out_dir: str) -> None:
        self.model.save_pretrained(out_dir, safe_serialization=True)


def _global_count(mode: str, masks: list[Tensor]) -> float:
    """The denominator `aggregate` needs so that micro-batch losses add up to the whole batch's loss."""
    if mode == "token-mean":
        return max(1.0, float(sum(m.sum() for m in masks)))
    if mode == "seq-mean-token-sum-norm":
        return float(sum(m.shape[0] for m in masks))
    return max(1.0, float(sum((m.sum(1) > 0).sum() for m in masks)))


def _add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, *, lr: float, warmup_steps: int) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then constant."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr


__all__ = ["PolicyLearner", "make_micro_batches", "MicroBatch", "math"]
