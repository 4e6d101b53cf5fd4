"""vLLM's log for a rollout engine: everything to a file in the run's output dir, and to the console only what a
user should see.

vLLM applies the logging config named by VLLM_LOGGING_CONFIG_PATH in every process it starts (the engine core
included). Each weight sync reloads the layers in place, and vLLM warns "<Layer>: Failed to load weights" for layers
the update does not carry: RotaryEmbedding (no weights at all) and, with tied embeddings, ParallelLMHead (rlplat
sends the embedding only; the head shares it). Those two are expected, so the console filter drops them; any other
layer that fails to load still shows. The file keeps every line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

ROTARY = "RotaryEmbedding: Failed to load weights"
TIED_HEAD = "ParallelLMHead: Failed to load weights"


class ExpectedWarnings(logging.Filter):
    """Drops records whose message is one of `expected` (the console handler's filter)."""

    def __init__(self, expected: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        self.expected = frozenset(expected)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.expected


def expected_warnings(model_path: str | Path) -> list[str]:
    """The warnings a weight sync into this model is expected to cause."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    return [ROTARY, TIED_HEAD] if config.get("tie_word_embeddings", False) else [ROTARY]


def logging_config(log_file: Path, expected: list[str], console_level: str = "WARNING") -> dict:
    """A logging.dictConfig for vLLM: console at `console_level` without the expected warnings, file at INFO."""
    fmt = {"format": "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": fmt},
        "filters": {"expected": {"()": f"{__name__}.ExpectedWarnings", "expected": expected}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "level": console_level, "formatter": "plain",
                        "filters": ["expected"], "stream": "ext://sys.stdout"},
            "file": {"class": "logging.FileHandler", "level": "INFO", "formatter": "plain",
                     "filename": str(log_file)},
        },
        "loggers": {"vllm": {"handlers": ["console", "file"], "level": "INFO", "propagate": False}},
    }


def route_vllm_logs(log_file: Path, model_path: str | Path) -> None:
    """Make the vLLM processes this process starts log through `logging_config` (call before the engine starts)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config_file = log_file.with_suffix(".logging.json")
    level = os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")
    config_file.write_text(json.dumps(logging_config(log_file, expected_warnings(model_path), level)))
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_file)
