"""rlplat: reinforcement-learning post-training for language models (Ray + vLLM + TransferQueue + MLflow)."""

__version__ = "0.1.0"

# Offline for every rlplat process and actor: a missing local model must never turn into a hub request.
# Set before anything imports transformers/huggingface_hub (they read these at import): the CLI's `bench`,
# driver.workers.init_ray for the driver and every Ray actor.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
