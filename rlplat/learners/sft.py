"""Supervised fine-tuning on chat conversations: cross-entropy on the assistant tokens only.

`SftLearner` holds one `PolicyLearner` (the same model loading, LoRA, dtype/autocast, fused fp32 LM head, AdamW,
LR warm-up, grad clipping, save and checkpoint state) and replaces only the loss. One `train_step(samples)`:
  1. buckets the conversations into micro-batches of at most `micro_batch_size_in_tokens` padded tokens
     (`make_micro_batches`, as the policy learner does);
  2. accumulates the gradient of `sft_loss` over them, each micro-batch weighted by its share of the step's
     trained tokens, so the step's loss is the token mean over every assistant token of the batch;
  3. takes one optimizer step (`PolicyLearner.optimizer_step`).
A conversation arrives as a `Sample` (rlplat.data.sft): its loss_mask is 1 on assistant tokens only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlplat.config import AlgorithmConfig, LearnerConfig, LoraConfig
from rlplat.learners.lora import is_peft_model, merged_state_dict
from rlplat.learners.microbatch import MicroBatch, make_micro_batches
from rlplat.learners.policy import PolicyLearner
from rlplat.types import Sample


def sft_loss(logp: Tensor, mask: Tensor, num_tokens: float) -> Tensor:
    """Negative log-likelihood of the masked tokens, summed and divided by `num_tokens`:
    L = -sum_{b,t} mask[b,t] * logp[b,t] / num_tokens.

    logp: [B, T] f32 log-probs of the target tokens. mask: [B, T] f32 0/1, 1 on trained (assistant) tokens.
    num_tokens: the trained tokens of the whole optimizer step (all micro-batches), so that the micro-batch losses
    add up to the step's token-mean cross-entropy. Returns a 0-dim f32 tensor.

    >>> sft_loss(torch.log(torch.tensor([[0.5, 0.25, 1.0]])), torch.tensor([[1.0, 1.0, 0.0]]), 2.0)
    tensor(1.0397)
    """
    return -(logp * mask).sum() / max(num_tokens, 1.0)


class SftLearner:
    def __init__(self, model_path: str, cfg: LearnerConfig, *, dtype: str, seed: int,
                 lora: LoraConfig | None = None) -> None:
        # No KL, no critic, no ReMix: the default algorithm keeps no frozen policy or value model.
        self.policy = PolicyLearner(model_path, cfg, AlgorithmConfig(), dtype=dtype, seed=seed, lora=lora)
        self.cfg = cfg

    @property
    def model(self) -> torch.nn.Module:
        return self.policy.model

    def micro_batches(self, samples: list[Sample]) -> list[MicroBatch]:
        return [mb.to(self.policy.device) for mb in make_micro_batches(samples, None,
                                                                        self.cfg.micro_batch_size_in_tokens)]

    def train_step(self, samples: list[Sample]) -> dict[str, float]:
        """One optimizer step on `samples` (conversations); returns loss/sft and the learner's train/ metrics."""
        micro = self.micro_batches(samples)
        counts = [float(mb.resp_mask.sum()) for mb in micro]  # host syncs before any kernel is queued
        total = sum(counts)
        self.policy.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.policy.device)
        for mb in micro:
            loss = sft_loss(self.policy.token_logp(mb), mb.resp_mask, total)
            loss.backward()
            loss_sum += loss.detach()
        metrics = {"loss/sft": float(loss_sum)} | self.policy.optimizer_step()
        self.policy.policy_version += 1  # counts optimizer steps, as in RL (checkpoints store it)
        metrics |= {"train/num_trained_tokens": total, "train/num_micro_batches": float(len(micro)),
                    "train/num_padded_tokens": float(sum(mb.num_tokens for mb in micro))}
        return metrics

    def eval_loss(self, samples: list[Sample]) -> float:
        """Token-mean cross-entropy on the assistant tokens of `samples`, without gradient."""
        micro = self.micro_batches(samples)
        total = sum(float(mb.resp_mask.sum()) for mb in micro)
        with torch.no_grad():
            return float(sum(sft_loss(self.policy.token_logp(mb), mb.resp_mask, total) for mb in micro))

    def save(self, out_dir: str) -> None:
        """A full model directory's weights and config (with LoRA, the adapters merged into the base weights: RL
        starts from a full model); the caller adds the tokenizer."""
        model = self.policy.model
        if is_peft_model(model):
            model.get_base_model().save_pretrained(out_dir, state_dict=merged_state_dict(model),  # type: ignore
                                                   safe_serialization=True)
        else:
            self.policy.save(out_dir)
