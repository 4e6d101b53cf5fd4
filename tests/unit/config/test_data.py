"""`data:` dataset-file options, `eval:` and `algorithm.dynamic_sampling`: defaults that keep every shipped spec as
it was, values read from a spec, and bad values as ConfigErrors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.config import ConfigError, DataConfig, DynamicSamplingConfig, EvalConfig, load_config

ROOT = Path(__file__).resolve().parents[3]
ALL_SPECS = sorted((ROOT / "configs").rglob("*.yaml"))


def _spec(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text("model: {path: m}\n" + text)
    return p


# the real-workload specs, which read data files (README "The real path", "A task that needs the tool")
DATASET_SPECS = {"arithmetic.yaml", "tools.yaml"}


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.name not in DATASET_SPECS],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_specs_use_the_builtin_task_and_default_eval(spec: Path) -> None:
    cfg = load_config(spec)
    assert cfg.data.train_files == () and cfg.data.eval_files == ()  # the built-in digit task, as before
    assert (cfg.data.prompt_key, cfg.data.system_prompt, cfg.data.apply_chat_template) == ("prompt", None, "auto")
    assert (cfg.data.max_prompt_tokens, cfg.data.on_overlong, cfg.data.shuffle) == (None, "drop", True)
    assert (cfg.eval.every_steps, cfg.eval.num_samples) == (0, 1)
    assert cfg.algorithm.dynamic_sampling == DynamicSamplingConfig(enabled=False, max_draw_rounds=3)


def test_the_real_path_spec_reads_files_with_eval_and_dynamic_sampling() -> None:
    cfg = load_config(ROOT / "configs" / "arithmetic.yaml")
    assert cfg.data.train_files == ("data/arithmetic-rl/train.jsonl",) and cfg.data.prompt_key == "question"
    assert (cfg.eval.every_steps, cfg.eval.num_samples) == (10, 4) and cfg.algorithm.dynamic_sampling.enabled


def test_dataset_fields_from_a_spec(tmp_path: Path) -> None:
    spec = _spec(tmp_path, """
data:
  train_files: [data/train.parquet, data/more.jsonl]
  eval_files: [data/test.jsonl]
  prompt_key: question
  system_prompt: Think step by step.
  apply_chat_template: always
  max_prompt_tokens: 512
  on_overlong: error
  shuffle: false
eval: {every_steps: 10, num_samples: 4}
algorithm: {dynamic_sampling: {enabled: true, max_draw_rounds: 5}}
""")
    cfg = load_config(spec)
    assert cfg.data == DataConfig(train_files=("data/train.parquet", "data/more.jsonl"),
                                  eval_files=("data/test.jsonl",), prompt_key="question",
                                  system_prompt="Think step by step.", apply_chat_template="always",
                                  max_prompt_tokens=512, on_overlong="error", shuffle=False)
    assert cfg.eval == EvalConfig(every_steps=10, num_samples=4)
    assert cfg.algorithm.dynamic_sampling == DynamicSamplingConfig(enabled=True, max_draw_rounds=5)


def test_files_are_not_checked_for_existence_here(tmp_path: Path) -> None:
    cfg = load_config(_spec(tmp_path, ""), ["data.train_files=[no/such/file.jsonl]"])  # preflight checks files
    assert cfg.data.train_files == ("no/such/file.jsonl",)


@pytest.mark.parametrize(("override", "message"), [
    ("data.on_overlong=skip", r"data\.on_overlong: 'skip' is not one of 'drop', 'error'"),
    ("data.apply_chat_template=sometimes",
     r"data\.apply_chat_template: 'sometimes' is not one of 'auto', 'always', 'never'"),
    ("data.train_files=data/train.jsonl", r"data\.train_files: expected a list, got str"),
    ("data.eval_files=[1]", r"data\.eval_files\[0\]: expected str, got int"),
    ("data.train_files=['']", r"data: train_files must be non-empty paths"),
    ("data.max_prompt_tokens=0", r"data: max_prompt_tokens must be >= 1"),
    ("data.prompt_key=''", r"data: prompt_key must name a column"),
    ("data.system_prompt=''", r"data: system_prompt must be non-empty text \(null for none\)"),
    ("data.shuffle=1", r"data\.shuffle: expected bool, got int"),
    ("data.train_file=[a.jsonl]", r"data\.train_file: unknown key"),
    ("eval.every_steps=-1", r"eval: every_steps must be >= 0"),
    ("eval.num_samples=0", r"eval: num_samples must be >= 1"),
    ("eval.every_step=5", r"eval\.every_step: unknown key"),
    ("algorithm.dynamic_sampling.max_draw_rounds=0", r"algorithm\.dynamic_sampling: max_draw_rounds must be >= 1"),
    ("algorithm.dynamic_sampling.enabled=maybe", r"algorithm\.dynamic_sampling\.enabled: expected bool, got str"),
])
def test_bad_values_are_config_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"spec\.yaml: {message}"):
        load_config(_spec(tmp_path, ""), [override])


def test_choices_are_checked_for_a_section_built_in_code() -> None:
    with pytest.raises(ValueError, match=r"on_overlong must be one of 'drop', 'error' \(got 'skip'\)"):
        DataConfig(on_overlong="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"apply_chat_template must be one of 'auto', 'always', 'never'"):
        DataConfig(apply_chat_template=True)  # type: ignore[arg-type]
