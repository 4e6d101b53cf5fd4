"""Rules that span sections (RunConfig): they fail at load time with one ConfigError line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlplat.config import (
    ConfigError,
    DataConfig,
    EnvConfig,
    ModelConfig,
    RewardConfig,
    RewardTerm,
    RolloutConfig,
    RunConfig,
    StoreConfig,
    load_config,
)

ROOT = Path(__file__).resolve().parents[3]
CARTPOLE = ROOT / "configs/envpool_cartpole.yaml"


def _spec(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text("model: {path: m}\n" + text)
    return p


# ------------------------------------------------------------------------------------------ env episodes + reward
def test_env_episodes_need_the_env_return_term(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "env: {task_id: CartPole-v1}\nreward: {terms: [{name: digit_accuracy}]}\n")
    with pytest.raises(ConfigError) as e:
        load_config(spec)
    assert str(e.value) == (f"{spec}: reward.terms: env.task_id is set but no term is env_return, so episode "
                            "returns would be ignored")


def test_env_return_term_needs_env_episodes(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "reward: {terms: [{name: env_return}]}\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml: reward\.terms: the env_return term reads episode returns, "
                                          r"but env\.task_id is not set"):
        load_config(spec)


def test_shipped_env_spec_loads_and_an_override_that_breaks_it_fails() -> None:
    assert load_config(CARTPOLE).env.task_id == "CartPole-v1"
    with pytest.raises(ConfigError, match=r"envpool_cartpole\.yaml: reward\.terms: .*no term is env_return"):
        load_config(CARTPOLE, ["reward.terms=[{name: digit_accuracy}]"])
    with pytest.raises(ConfigError, match=r"reward\.terms: the env_return term .* env\.task_id is not set"):
        load_config(CARTPOLE, ["env.task_id=''"])


@pytest.mark.parametrize("key", ["train_files", "eval_files"])
def test_env_episodes_replace_dataset_files(tmp_path: Path, key: str) -> None:
    spec = _spec(tmp_path, f"env: {{task_id: CartPole-v1}}\nreward: {{terms: [{{name: env_return}}]}}\n"
                           f"data: {{{key}: [d.jsonl]}}\n")
    with pytest.raises(ConfigError, match=rf"spec\.yaml: data\.{key}: env\.task_id is set, so env episodes replace "
                                          rf"the dataset's prompts; remove data\.{key} or env\.task_id"):
        load_config(spec)


@pytest.mark.parametrize("extra", [[], ["env.in_actor=true"], ["data.store.enabled=true"]])
def test_env_episodes_with_partial_rollouts_load(extra: list[str]) -> None:
    """APRIL on env episodes (the episode manager) is supported, in the driver's pool, an EnvActor or async."""
    cfg = load_config(CARTPOLE, ["rollout.partial.enabled=true", "rollout.partial.over_provision=3.0", *extra])
    assert cfg.rollout.partial.enabled and cfg.env.task_id


def test_rules_hold_for_a_config_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"reward\.terms: env\.task_id is set"):
        RunConfig(model=ModelConfig(path="m"), env=EnvConfig(task_id="CartPole-v1"))
    RunConfig(model=ModelConfig(path="m"), env=EnvConfig(task_id="CartPole-v1"),
              reward=RewardConfig(terms=(RewardTerm(name="env_return"),)))


# ------------------------------------------------------------------------------------------ store capacity
@pytest.mark.parametrize(("capacity", "max_staleness", "num_prompts", "expected"), [
    (None, 1, 16, 32),  # default: (k + 1) * N, the trained batch plus k batches ahead
    (None, 0, 8, 8),  # synchronous bound: one batch
    (None, 3, 5, 20),
    (40, 1, 16, 40),  # set: taken as is
    (4, 1, 16, 16),  # set below one batch: raised to one batch (a whole batch always fits)
    (16, 0, 16, 16),
])
def test_store_capacity_in_groups(capacity: int | None, max_staleness: int, num_prompts: int, expected: int) -> None:
    cfg = RunConfig(model=ModelConfig(path="m"), rollout=RolloutConfig(num_prompts_per_step=num_prompts),
                    data=DataConfig(store=StoreConfig(enabled=True, capacity_in_groups=capacity,
                                                      max_staleness=max_staleness)))
    assert cfg.store_capacity_in_groups == expected


def test_store_capacity_from_a_spec(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "rollout: {num_prompts_per_step: 6}\ndata: {store: {enabled: true, max_staleness: 2}}\n")
    assert load_config(spec).store_capacity_in_groups == 18
    assert load_config(spec, ["data.store.capacity_in_groups=7"]).store_capacity_in_groups == 7
