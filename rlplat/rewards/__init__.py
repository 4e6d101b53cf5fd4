"""Reward functions: pure torch/stdlib math that scores completions (tensors in, tensors out)."""
