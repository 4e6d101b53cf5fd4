"""Rollout: the vLLM engine wrapper, in-place weight sync and APRIL partial rollouts. Only this package imports
vllm."""
