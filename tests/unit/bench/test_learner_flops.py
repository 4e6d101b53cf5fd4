"""The FLOP count behind `bench learner`'s MFU headline, by hand."""

from __future__ import annotations

from rlplat.bench.learner import QWEN25_05B, Shape, attention_flops_per_token


def test_attention_flops_are_palm_term_over_the_causal_half() -> None:
    # one layer, hidden 4, 8 tokens: QK^T and AV forward = 2 matmuls x 2 FLOPs x hidden x 8 keys = 128 per token,
    # backward twice that = 256, so 384 over all 8 x 8 scores and 192 over the causal half
    assert attention_flops_per_token(Shape(hidden=4, layers=1, heads=1, kv_heads=1, intermediate=8, vocab=16), 8) == 192
    # Qwen2.5-0.5B at 2048 tokens: 12 x 24 x 896 x 2048 / 2
    assert attention_flops_per_token(QWEN25_05B, 2048) == 264_241_152
