"""`model:` and `learner:`: the policy's weights (with optional LoRA) and how the learner updates them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlplat.config.errors import check


@dataclass(frozen=True, kw_only=True, slots=True)
class LoraConfig:
    """LoRA adapters through peft: only the adapters train; every weight sync sends the merged weights."""

    rank: int = 8
    alpha: float = 16.0  # scaling = alpha / rank
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check(self.rank >= 1, "rank must be >= 1")
        check(self.alpha > 0, "alpha must be > 0")
        check(len(self.target_modules) >= 1, "target_modules must name at least one module")
        check(0 <= self.dropout < 1, "dropout must be in [0, 1)")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    path: str  # a local Hugging Face model directory (`rlplat model tiny DIR` writes one)
    # float32: plain fp32. bfloat16/float16: the learner keeps fp32 master weights and runs forward/backward under
    # autocast in this dtype; the rollout engine runs in this dtype.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None  # absent: full fine-tuning


@dataclass(frozen=True, kw_only=True, slots=True)
class LearnerConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip_norm: float = 1.0
    warmup_steps: int = 0
    # Token budget per forward/backward: samples sorted by length are bucketed so that rows x padded length <= it.
    micro_batch_size_in_tokens: int = 4096
    compile: bool = False  # torch.compile the backbone and the log-prob head (GPU: worth it for long runs)
    activation_checkpointing: bool = False  # trade compute for memory (recompute layer activations in backward)
    # Attention kernel of the learner (and critic) model, as transformers' attn_implementation: sdpa (PyTorch's fused
    # kernels), flex_attention (Triton, compiled; GPU only: it has no backward on CPU) or eager (plain matmuls).
    attn_implementation: Literal["sdpa", "flex_attention", "eager"] = "sdpa"
    fused_optimizer: bool = True  # fused AdamW kernel when the learner runs on CUDA
    # LM head matmul in fp32 on the fp32 master weights (ScaleRL: fewer trainer/generator mismatches). false: in
    # model.dtype under autocast; the log-softmax is fp32 either way. On GPU the fp32 head costs throughput.
    fp32_lm_head: bool = True
    # Fused LM head: log-probs, their gradient and the entropy from chunks of this many tokens, never the whole
    # micro-batch's [tokens, vocabulary] logits (rlplat/learners/fused_head.py). 0: the plain full-logits head.
    head_chunk_tokens: int = 4096
    # Fused head: recompute each chunk's logits in the backward (memory O(chunk x vocabulary)). false: keep them from
    # the forward in the head's dtype, one head matmul less per step for O(micro-batch tokens x vocabulary) memory.
    head_recompute: bool = True
    # Learner processes (Ray actors) forming one torch.distributed group (NCCL on GPU, gloo on CPU). With more than
    # one the policy, critic and KL reference are sharded with FSDP2 and a step's samples are split by tokens.
    num_ranks: int = 1
    fsdp: bool = False  # shard with FSDP2 even with num_ranks: 1 (always on with more ranks)
    fsdp_cpu_offload: bool = False  # FSDP2 keeps shards, gradients and the optimizer step in CPU memory (GPU only)
    # Weight sync from shards: parameters are gathered into buckets of at most this many MiB (a larger tensor is a
    # bucket of its own); rank 0 sends one bucket at a time.
    sync_bucket_mb: int = 256

    @property
    def sharded(self) -> bool:
        """FSDP2: more than one rank, or asked for with one."""
        return self.fsdp or self.num_ranks > 1

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr must be > 0")
        check(self.num_ranks >= 1, "num_ranks must be >= 1")
        check(self.sync_bucket_mb >= 1, "sync_bucket_mb must be >= 1")
        check(not (self.sharded and self.compile), "compile is not supported with FSDP (num_ranks > 1 or fsdp: "
              "true) yet; set compile: false")
        check(self.head_chunk_tokens >= 0, "head_chunk_tokens must be >= 0 (0: the plain full-logits head)")
        check(self.grad_clip_norm > 0, "grad_clip_norm must be > 0")
        check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        check(self.micro_batch_size_in_tokens >= 1, "micro_batch_size_in_tokens must be >= 1")
