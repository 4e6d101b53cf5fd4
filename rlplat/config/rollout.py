"""`rollout:`: generation by the vLLM engines, and APRIL partial rollouts (`rollout.partial`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlplat.config.errors import check


@dataclass(frozen=True, kw_only=True, slots=True)
class PartialRolloutConfig:
    """APRIL active partial rollouts (ALGORITHMS.md section 1): over-provision, abort, continue next step."""

    enabled: bool = False
    over_provision: float = 2.0  # groups issued per step / groups needed per step (N'/N), >= 1
    max_age_in_versions: int = 0  # drop a buffered group whose oldest token is older than this; 0 = never drop

    def __post_init__(self) -> None:
        check(self.over_provision >= 1, "over_provision must be >= 1 (N' >= N groups in flight)")
        check(self.max_age_in_versions >= 0, "max_age_in_versions must be >= 0")


# A sanity bound, not a capacity: peers' largest recipes use ~10^4 samples per step; 10^12 is a typo that would
# otherwise allocate the whole step's prompt list before anything says no.
MAX_SAMPLES_PER_STEP = 1_000_000


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutConfig:
    num_prompts_per_step: int = 16  # groups per training step (N)
    num_samples_per_prompt: int = 8  # group size
    max_new_tokens: int = 16  # response budget per sample
    temperature: float = 1.0
    top_p: float = 1.0
    # Keep sampling past EOS up to max_new_tokens (verl's rollout.ignore_eos): fixed-length responses, for
    # benchmark workloads whose cost must not depend on when a random or early model happens to stop.
    ignore_eos: bool = False
    num_workers: int = 1  # vLLM engines, one Ray actor each
    max_num_seqs: int = 256  # sequences an engine decodes at once (vLLM's max_num_seqs); more wait their turn
    # Tokens per streamed update of a request (vLLM's stream_interval). Larger values cut the per-token host
    # work of following hundreds of requests; tokens of an update that straddles a weight load are recorded
    # with the older policy version (staleness over-, never under-estimated; log-probs are exact either way).
    stream_interval: int = 1
    # Seed every request from (experiment.seed, group, sample, tokens so far) instead of the engine's one generator,
    # so a run at a fixed seed samples the same tokens again (given the same logits). Off by default, as in verl and
    # TRL: per-request generators make vLLM sample request by request.
    reproducible_sampling: bool = False
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True
    # GPUs per engine: vLLM's own tensor parallelism (its workers in one set of placement bundles on one node).
    tensor_parallel_size: int = 1
    # vLLM's sleep mode, with placement.colocate on GPU: engines free their GPU memory while the learner trains and
    # wake for the weight sync. 0: off; 1: offload the weights to CPU memory; 2: discard them (the sync reloads
    # them); 1 and 2 free the KV cache. Not with the async store (data.store.enabled). rlplat/rollout/sleep.py.
    sleep_level: int = 0
    partial: PartialRolloutConfig = field(default_factory=PartialRolloutConfig)

    def __post_init__(self) -> None:
        for name in ("num_prompts_per_step", "num_samples_per_prompt", "max_new_tokens", "num_workers", "max_num_seqs",
                     "stream_interval", "tensor_parallel_size"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1")
        samples = self.num_prompts_per_step * self.num_samples_per_prompt
        check(samples <= MAX_SAMPLES_PER_STEP, f"num_prompts_per_step x num_samples_per_prompt = {samples:,} samples "
              f"per step; at most {MAX_SAMPLES_PER_STEP:,} (a typo? large batches are tens of thousands)")
        check(self.temperature > 0, "temperature must be > 0")
        check(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization must be in (0, 1]")
        check(self.sleep_level in (0, 1, 2), "sleep_level must be 0 (off), 1 or 2 (vLLM's sleep levels)")
