"""rlplat: reinforcement-learning post-training for language models (Ray + vLLM + TransferQueue + MLflow)."""

__version__ = "0.1.0"
