"""Sleep mode for engines colocated with the learner (`rollout.sleep_level`, vLLM's sleep mode; CUDA only).

On a GPU shared by an engine and the learner, the engine gives its memory back while the learner trains. One step:

    generate -> sleep(level) -> train -> wake("weights") -> sync weights -> wake("kv_cache") -> generate

level 1 offloads the weights to CPU memory and discards the KV cache; level 2 discards both (the weight sync
overwrites every parameter anyway, and vLLM keeps the model's buffers, e.g. rotary tables, on the CPU meanwhile).
The KV cache comes back last, so the learner's sync buffers and the engine's weights never share the card with it.
The prefix cache is cleared at sleep (its blocks hold nothing after a wake) and again after the weights change.

An engine must be idle when it falls asleep (vLLM's sleep aborts whatever runs), so sleep mode needs the
synchronous loop: the async store (`data.store.enabled`) generates while the learner trains and is refused.
APRIL (`rollout.partial`) is fine: its manager drains every aborted request before the step's rollout returns.
No Ray and no vLLM here: the schedule's steps are called by `Workers` (driver/workers.py) and `RolloutEngine`.
"""

from __future__ import annotations

import os

ALL_TAGS = ("weights", "kv_cache")  # what vLLM's wake_up restores; a sleeping engine holds both asleep
BEFORE_SYNC = ("weights",)  # woken before the sync writes into them (level 2: allocated, contents undefined)
AFTER_SYNC = ("kv_cache",)


def merge_engine_metrics(per_engine: list[dict[str, float]]) -> dict[str, float]:
    """One step's sleep/wake metrics over every engine: freed memory adds up (each engine frees its own GPU's),
    times take the slowest engine (they sleep and wake in parallel). An empty dict when nothing was measured.

    >>> merge_engine_metrics([{"sleep/freed_gib": 30.0, "time/wake_s": 0.5},
    ...                       {"sleep/freed_gib": 28.0, "time/wake_s": 0.7}])
    {'sleep/freed_gib': 58.0, 'time/wake_s': 0.7}
    """
    out: dict[str, float] = {}
    for metrics in per_engine:
        for key, value in metrics.items():
            add = key.endswith("_gib")
            out[key] = out.get(key, 0.0) + value if add else max(out.get(key, value), value)
    return out


def gpu_free_bytes() -> int | None:
    """Free memory of this process's first visible GPU (NVML: no CUDA context is created); None without one.

    The engine's actor calls it around a sleep: vLLM's worker lives in another process, and the learner is idle
    then, so the change in free memory is what the engine gave back.
    """
    memory = gpu_memory_bytes()
    return None if memory is None else memory[0]


def gpu_memory_bytes() -> tuple[int, int] | None:
    """(free, total) bytes of this process's first visible GPU by NVML; None without NVML or a GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    try:
        try:
            import pynvml  # nvidia-ml-py, beside torch's CUDA builds
        except ImportError:
            from vllm.third_party import pynvml  # the copy vLLM ships
        pynvml.nvmlInit()
        handle = (pynvml.nvmlDeviceGetHandleByUUID(visible) if visible.startswith(("GPU-", "MIG-"))
                  else pynvml.nvmlDeviceGetHandleByIndex(int(visible or 0)))
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return int(info.free), int(info.total)
    except Exception:  # no NVML (CPU machine), no such device: nothing to measure
        return None
