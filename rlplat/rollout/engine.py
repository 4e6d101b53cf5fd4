"""A vLLM AsyncLLM engine that continues samples from their token ids and keeps per-token behaviour log-probs.

`RolloutEngine` is a plain object (no Ray); `rlplat.actors.rollout.RolloutActor` wraps one per worker.
Every request is one sample: the prompt plus the response generated so far, continued with the remaining token
budget. That is how APRIL resumes an aborted sample next step from token ids, never from re-tokenised text.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from rlplat.rollout.sleep import ALL_TAGS, gpu_free_bytes
from rlplat.rollout.sockets import private_socket_dir
from rlplat.types import FinishReason, Sample, SamplingOptions


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    model_path: str
    max_model_len: int
    seed: int = 0
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True
    max_num_seqs: int = 256
    cpu_kv_cache_gib: float = 1.0  # on CPU only: KV-cache size (vLLM's CPU default is far larger)
    stream_interval: int = 1  # tokens per streamed update of a request (vLLM's stream_interval)
    tensor_parallel_size: int = 1  # GPUs per engine; > 1: vLLM's Ray executor in the actor's placement bundles
    enable_sleep_mode: bool = False  # rollout.sleep_level (CUDA only): vLLM's memory pool that `sleep` can release


_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


def in_engine_core_process() -> None:
    """On CPU, run the model in the engine-core process itself (vLLM's "uni" executor), as vLLM does on a GPU.

    vLLM's CPU platform turns "uni" into its multiprocess executor unless VLLM_ENABLE_V1_MULTIPROCESSING is 0: a
    third process per engine that imports torch again (~15 s of every engine start on 2 cores) and polls a
    /dev/shm queue between steps. AsyncLLM still runs its engine core in a child process either way; the variable
    only decides where the model runs, and this actor process exists for the engine alone. What vLLM gives up is
    its OpenMP core binding, which on a small shared machine only pins the model to one core.
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def is_engine_dead(error: BaseException) -> bool:
    """vLLM's EngineDeadError: the engine core process is gone (a native crash, an OOM kill) and serves no more."""
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError)


class RolloutEngine:
    """Owns one vLLM AsyncLLM. Call `start()` inside the event loop that will run `generate`."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.engine = None
        self._ids = itertools.count()
        self._inflight: set[str] = set()
        self.loaded_version: int | None = None  # policy version of the weights last loaded with a version
        self.socket_dir: Path | None = None  # vLLM's IPC sockets (rollout/sockets.py), removed at shutdown
        self.asleep: set[str] = set()  # sleep mode: the tags of ALL_TAGS vLLM holds asleep (rollout/sleep.py)
        self.weights_discarded = False  # slept at level 2 and no weights loaded since: nothing valid to run

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        o = self.options
        args = AsyncEngineArgs(
            model=o.model_path,
            max_model_len=o.max_model_len,
            seed=o.seed,
            dtype=o.dtype,
            gpu_memory_utilization=o.gpu_memory_utilization,
            enforce_eager=o.enforce_eager,
            max_num_seqs=o.max_num_seqs,
            logprobs_mode="processed_logprobs",  # log-probs of the distribution actually sampled from
            worker_extension_cls="rlplat.rollout.weight_sync.WeightSyncExtension",
            enable_prefix_caching=True,
            stream_interval=o.stream_interval,
            tensor_parallel_size=o.tensor_parallel_size,
            distributed_executor_backend="ray" if o.tensor_parallel_size > 1 else "uni",
            enable_sleep_mode=o.enable_sleep_mode,
        )
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            if o.tensor_parallel_size == 1:
                in_engine_core_process()
            if o.cpu_kv_cache_gib > 0:
                args.kv_cache_memory_bytes = int(o.cpu_kv_cache_gib * 2**30)
        self.socket_dir = private_socket_dir()
        self.engine = AsyncLLM.from_engine_args(args)

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        """Continue every unfinished sample until it stops, hits its budget, or `abort()` is called.

        Samples are extended in place (tokens, behaviour log-probs, policy version per token) and returned.
        An aborted sample keeps what it generated so far and stays PENDING. A sleeping engine wakes first.
        """
        await self._wake_to_run()
        await asyncio.gather(*(self._continue(s, sampling, policy_version) for s in samples if not s.is_finished))
        return samples

    async def _continue(self, sample: Sample, sampling: SamplingOptions, policy_version: int) -> None:
        """One request. vLLM streams deltas (only the tokens new since the last update, RequestOutputKind.DELTA),
        so following a request costs O(its length), not O(length^2) as cumulative outputs would; no text is
        detokenised (rlplat works on token ids)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        budget = sampling.max_new_tokens - sample.num_response_tokens
        if budget <= 0:
            sample.finish_reason = FinishReason.LENGTH
            return
        params = SamplingParams(
            n=1,
            max_tokens=budget,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            ignore_eos=sampling.ignore_eos,
            logprobs=0,
            skip_special_tokens=False,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
            seed=None if sampling.seed is None else request_seed(sampling.seed, sample),
        )
        request_id = f"s{next(self._ids)}"
        prompt = TokensPrompt(prompt_token_ids=sample.prompt_token_ids + sample.response_token_ids)
        self._inflight.add(request_id)
        token_ids: list[int] = []
        logps: list[float] = []
        versions: list[int] = []  # per token: weights may be swapped (load_weights) while this request runs
        finish_reason = None
        version = self._version(policy_version)  # the version of the weights at the last update
        try:
            assert self.engine is not None, "call start() first"
            async for out in self.engine.generate(prompt, params, request_id):
                if not out.outputs:
                    continue
                delta = out.outputs[0]
                version = delta_version(version, self._version(policy_version), len(delta.token_ids))
                token_ids += delta.token_ids
                logps += _sampled_logps(delta.token_ids, delta.logprobs)
                versions += [version] * len(delta.token_ids)
                finish_reason = delta.finish_reason or finish_reason
                version = self._version(policy_version)
        finally:
            self._inflight.discard(request_id)
        if token_ids or finish_reason:
            sample.extend(token_ids, logps, versions, _FINISH.get(finish_reason or "", FinishReason.PENDING))

    def _version(self, requested: int) -> int:
        """The version generating right now: the caller's, unless newer weights were loaded since."""
        if self.loaded_version is not None and self.loaded_version > requested:
            return self.loaded_version
        return requested

    async def abort(self) -> int:
        """Abort every in-flight request; their samples keep partial output. Returns how many were aborted."""
        ids = list(self._inflight)
        if ids and self.engine is not None:
            await self.engine.abort(ids)
        return len(ids)

    async def load_weights(self, payload: bytes, version: int | None = None) -> None:
        """Load safetensors bytes into every worker in place (the `bytes` weight sync)."""
        await self.receive_weights("load_weights_from_bytes", (payload,), version)

    async def receive_weights(self, method: str, args: tuple, version: int | None = None) -> None:
        """Run a `WeightSyncExtension` loading method on every worker, then drop cached prefixes of the old weights.

        With `version`, tokens generated from now on (also by requests already running) carry that version.
        Sleeping weights are woken first (a restarted engine's reload may come while the others sleep).
        """
        assert self.engine is not None
        await self.wake_up(("weights",))
        await self.engine.collective_rpc(method, args=args)
        self.weights_discarded = False
        await self._drop_cached_prefixes()
        if version is not None:
            self.loaded_version = version

    async def _drop_cached_prefixes(self, attempts: int = 50, wait_s: float = 0.02) -> None:
        """vLLM refuses to reset its prefix cache while KV blocks are in use. Just after an abort (APRIL) the
        aborted requests' blocks are freed within a few engine steps, and a continuation would otherwise reuse KV
        computed with the old weights: with none of this engine's requests in flight, ask again (at most
        attempts x wait_s). With requests running (async rollout) the reset cannot happen now; do not wait."""
        assert self.engine is not None
        for _ in range(attempts):
            if await self.engine.reset_prefix_cache() or self._inflight:
                return
            await asyncio.sleep(wait_s)

    async def sleep(self, level: int) -> dict[str, float]:
        """vLLM's sleep mode: release the KV cache and offload (level 1) or discard (level 2) the weights.

        Only an idle engine may sleep (vLLM's sleep aborts running requests): RuntimeError with requests in flight.
        Returns `time/sleep_s` and, where NVML sees the GPU, `sleep/freed_gib` (free memory after - before).
        """
        assert self.engine is not None
        if self._inflight:
            raise RuntimeError(f"sleep: {len(self._inflight)} requests are in flight; an engine sleeps only between "
                               "a step's generation and its weight sync (rollout.sleep_level)")
        if self.asleep:
            return {}
        free_before, t0 = gpu_free_bytes(), time.perf_counter()
        await self.engine.reset_prefix_cache()  # vLLM clears it too when it sleeps; its blocks will hold nothing
        await self.engine.sleep(level)
        self.asleep, self.weights_discarded = set(ALL_TAGS), level >= 2
        metrics = {"time/sleep_s": time.perf_counter() - t0}
        free_after = gpu_free_bytes()
        if free_before is not None and free_after is not None:
            metrics["sleep/freed_gib"] = (free_after - free_before) / 2**30
        return metrics

    async def wake_up(self, tags: tuple[str, ...] = ALL_TAGS) -> dict[str, float]:
        """Bring back those of `tags` ("weights", "kv_cache") that sleep; returns `time/wake_<tag>_s`, or {} when
        none slept. After level 2 the woken weights hold garbage until the next weight load."""
        todo = [t for t in tags if t in self.asleep]
        if not todo:
            return {}
        assert self.engine is not None
        t0 = time.perf_counter()
        await self.engine.wake_up(todo)
        self.asleep -= set(todo)
        if "kv_cache" in todo:
            await self._drop_cached_prefixes()  # nothing cached may point into the freshly mapped blocks
        return {f"time/wake_{'_'.join(todo)}_s": time.perf_counter() - t0}

    async def _wake_to_run(self) -> None:
        """Before generating or scoring: wake what sleeps; level 2 without a weight load since has no weights."""
        if self.weights_discarded:
            raise RuntimeError("the engine slept at level 2 (rollout.sleep_level) and has had no weights loaded since; "
                               "a weight sync must come before generation")
        await self.wake_up(ALL_TAGS)

    async def rpc(self, method: str, *args: object) -> object:
        """Call a `WeightSyncExtension` method on the (first) worker: checksums, parameter names, stats."""
        assert self.engine is not None
        await self.wake_up(("weights",))  # a checksum reads them
        return (await self.engine.collective_rpc(method, args=args))[0]

    async def score(self, token_ids: list[int]) -> list[float]:
        """Log-prob of each token of `token_ids` after the first, under the engine's current weights."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        assert self.engine is not None
        await self._wake_to_run()
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        final = None
        request_id = f"score{next(self._ids)}"
        async for out in self.engine.generate(TokensPrompt(prompt_token_ids=token_ids), params, request_id):
            final = out
        assert final is not None and final.prompt_logprobs is not None
        return [float(pos[tok].logprob) for tok, pos in zip(token_ids[1:], final.prompt_logprobs[1:], strict=True)]

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None


def request_seed(base: int, sample: Sample) -> int:
    """The sampling seed of one request: a function of the run's seed, the sample's group and index, and how many
    tokens it already has (a continued sample draws afresh, not a replay of its first request's draws). It does not
    depend on which engine serves the request or on what else is batched with it, so a run repeats token for token
    wherever the engine's logits do."""
    key = f"{base}:{sample.group_id}:{sample.sample_index}:{sample.num_response_tokens}".encode()
    return zlib.crc32(key)


def delta_version(before: int, now: int, num_tokens: int) -> int:
    """The policy version to record for a streamed update of `num_tokens` tokens: `before` is the version at the
    previous update (or the request's start), `now` the version loaded at this one. A single token was sampled
    after the previous update, by the weights loaded now (a load runs between engine steps, and each step streams
    its token). Several tokens (stream_interval > 1) may straddle a load: they get the older version, so a
    token's staleness is over-estimated, never under-estimated (its behaviour log-prob is exact either way)."""
    return now if num_tokens <= 1 else min(before, now)


def _sampled_logps(token_ids: list[int], logprobs) -> list[float]:
    """Log-prob of each sampled token from vLLM's per-position dicts (logprobs=0 returns just the sampled one)."""
    if logprobs is None:
        return [0.0] * len(token_ids)
    out = []
    for tok, pos in zip(token_ids, logprobs, strict=True):
        lp = pos[tok].logprob
        out.append(float(lp) if math.isfinite(lp) else -1e4)
    return out
