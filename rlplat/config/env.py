"""`env:`: multi-turn episodes in an EnvPool environment instead of the `data` prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlplat.config.errors import check


@dataclass(frozen=True, kw_only=True, slots=True)
class EnvConfig:
    """Multi-turn episodes in an EnvPool environment instead of the `data` prompt task (rlplat.envs.agent_loop).

    With task_id set: rollout.num_prompts_per_step = env seeds per step (one GRPO group each),
    rollout.num_samples_per_prompt = episodes played from each seed, rollout.max_new_tokens = token budget of a
    whole episode (model + env tokens). The reward needs the `env_return` term. The pool (num_prompts_per_step x
    num_samples_per_prompt envs) lives in the driver, or in an EnvActor with in_actor. Templates take {observation}
    and {action_help}.
    """

    task_id: str = ""  # an EnvPool task id with a text renderer (e.g. CartPole-v1); empty: no env, use `data`
    renderer: Literal["default", "compact"] = "default"  # compact: few-token observations for tiny contexts
    max_turns: int = 16  # model turns per episode
    max_new_tokens_per_turn: int = 8  # one model turn ends at EOS or after this many tokens
    invalid_action_penalty: float = -1.0  # added to the step reward of an unparseable reply (default action played)
    return_scale: float = 1.0  # sample reward (env_return) = return_scale * sum of step rewards
    max_episode_steps: int | None = None  # env step limit; None: EnvPool's default
    prompt_template: str = "{action_help}\n{observation}\n"  # the first observation
    observation_template: str = "\n{observation}\n"  # each later observation, after the model's turn
    replace_whitespace: str | None = None  # replace whitespace runs in env text (tokenizers without whitespace)
    num_threads: int | None = None  # EnvPool threads; None: min(num_envs, CPU count)
    seed: int = 0  # step s plays seeds seed + (s - 1) * num_prompts_per_step + k
    in_actor: bool = False  # the pool in an EnvActor (Ray) instead of the driver: for pools too heavy for its node

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_new_tokens_per_turn"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1")
        check(self.invalid_action_penalty <= 0, "invalid_action_penalty must be <= 0")
        check(self.return_scale > 0, "return_scale must be > 0")
        check(self.max_episode_steps is None or self.max_episode_steps >= 1, "max_episode_steps must be >= 1")
        check(self.num_threads is None or self.num_threads >= 1, "num_threads must be >= 1")
        check(self.seed >= 0, "seed must be >= 0")
        for name in ("prompt_template", "observation_template"):
            template = getattr(self, name)
            check("{observation}" in template, f"{name} must contain {{observation}}")
            try:
                template.format(observation="", action_help="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"{name}: bad template {template!r} (placeholders: observation, action_help): "
                                 f"{e}") from None
