"""Rollout: the vLLM engine wrapper, in-place weight sync and (later) APRIL partial rollouts. Only this package imports vllm."""
