"""Text environments: multi-turn episodes that a language model plays by writing its actions as text.

- `text_env`: the `TextEnv` protocol, `StepResult`, `TextEnvSpec`, and `EnvPoolTextEnv`, which runs an EnvPool
  pool asynchronously (send/recv with env ids).
- `renderers`: one `Renderer` per supported task, turning an observation into text and a reply into an action.
  `RENDERERS` maps task ids to them; `COMPACT_RENDERERS` holds few-token ones (`env.renderer: compact`).
- `registry`: the one env factory: `make_text_env(task_id, num_envs, ...)` checks the task id and picks its
  renderer; `make_episode_env(cfg, num_envs)` builds the spec's env.
- `agent_loop`: `play_episodes`, a language model playing a batch of episodes turn by turn, one `Sample` each.
- `episode_april`: APRIL for episodes: stop at N complete groups, continue the cut episodes next step.
"""
