"""The spec loader: strict keys and types, overrides, base includes, and every shipped spec loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[3]
ALL_SPECS = sorted((ROOT / "configs").rglob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_spec_loads(spec: Path) -> None:
    assert isinstance(load_config(spec), RunConfig)


def test_unknown_key_names_path_and_file(tmp_path: Path) -> None:
    spec = _write(tmp_path, "model: {path: m}\nrollout: {num_prompt_per_step: 4}\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml: rollout\.num_prompt_per_step: unknown key"):
        load_config(spec)


def test_wrong_type_names_path(tmp_path: Path) -> None:
    spec = _write(tmp_path, "model: {path: m}\nrollout: {max_new_tokens: many}\n")
    with pytest.raises(ConfigError, match=r"rollout\.max_new_tokens: expected int, got str"):
        load_config(spec)


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    spec = _write(tmp_path, "model: {path: m}\nrollout: {num_workers: true}\n")
    with pytest.raises(ConfigError, match=r"rollout\.num_workers"):
        load_config(spec)


def test_bad_value_is_a_config_error(tmp_path: Path) -> None:
    spec = _write(tmp_path, "model: {path: m}\nrollout: {num_samples_per_prompt: 0}\n")
    with pytest.raises(ConfigError, match=r"rollout: num_samples_per_prompt must be >= 1"):
        load_config(spec)


def test_literal_lists_valid_values(tmp_path: Path) -> None:
    spec = _write(tmp_path, "model: {path: m}\nalgorithm: {policy_loss: trpo}\n")
    with pytest.raises(ConfigError, match=r"algorithm\.policy_loss: 'trpo' is not one of 'ppo'"):
        load_config(spec)


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model: required key is missing"):
        load_config(_write(tmp_path, "experiment: {name: x}\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config("no/such/spec.yaml")


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    spec = _write(tmp_path, "model: {path: m}\n")
    cfg = load_config(spec, ["rollout.max_new_tokens=7", "learner.lr=3e-4", "experiment.name=abc"])
    assert (cfg.rollout.max_new_tokens, cfg.learner.lr, cfg.experiment.name) == (7, 3e-4, "abc")


def test_override_of_unknown_key_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rollout\.bogus: unknown key"):
        load_config(_write(tmp_path, "model: {path: m}\n"), ["rollout.bogus=1"])


def test_base_include_merges_nested(tmp_path: Path) -> None:
    _write(tmp_path, "model: {path: m}\nrollout: {max_new_tokens: 9, num_workers: 2}\n", "base.yaml")
    spec = _write(tmp_path, "base: base.yaml\nrollout: {max_new_tokens: 5}\n")
    cfg = load_config(spec)
    assert (cfg.rollout.max_new_tokens, cfg.rollout.num_workers) == (5, 2)


def test_only_one_level_of_base(tmp_path: Path) -> None:
    _write(tmp_path, "model: {path: m}\n", "a.yaml")
    _write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match=r"at most one level"):
        load_config(_write(tmp_path, "base: b.yaml\n"))


def test_reward_terms_list(tmp_path: Path) -> None:
    spec = _write(tmp_path, "model: {path: m}\nreward:\n  terms:\n    - {name: exact_match, weight: 0.5}\n")
    assert load_config(spec).reward.terms[0].weight == 0.5
