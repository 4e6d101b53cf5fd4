"""Pure RL math for rlplat: advantage estimators, policy/value losses, KL estimators, ReMix pieces, filters.

Only torch and the standard library are imported here, so everything runs and is tested on CPU. Functions take
tensors and scalars and return tensors (plus ``dict[str, Tensor]`` metrics for losses); no config objects.

Tensor vocabulary (STYLE.md rule 10): B = sequences, T = response tokens, N = samples (outcome level, N == B).
``logp``/``logp_old``/``logp_ref``/``adv``/``mask`` are ``[B, T]`` float32, ``mask`` holds 0/1; sequence-level
quantities are ``[B]``.

Modules:
- ``advantages``: GRPO / Dr.GRPO / RLOO / REINFORCE++-baseline / ReMax / ScaleRL advantages, GAE, whitening,
  and ``ADVANTAGE_FNS`` (outcome-reward estimators by name).
- ``losses``: loss aggregation modes and their micro-batch denominators (``aggregate_count``), the input cleaning,
  clip check, IS weighting and ratio metrics every policy loss shares, PPO-clip (DAPO clip-higher, dual clip),
  CISPO, GSPO, truncated IS weights, clipped value loss, entropy and log-probs from logits, and ``POLICY_LOSS_FNS``.
- ``kl``: per-token KL estimators (k1/abs/k2/k3 and straight-through variants) and the adaptive KL coefficient.
- ``remix``: ReMix (arXiv:2507.06892) mix-policy clipped objective, KL-convex constraint and its schedule,
  reincarnation switch, and the replay-source sampler.
- ``filters``: zero-variance group filter.
"""
