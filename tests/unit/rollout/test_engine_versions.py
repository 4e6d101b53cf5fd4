"""The policy version recorded for a streamed update (rlplat.rollout.engine.delta_version), by hand."""

from __future__ import annotations

from rlplat.rollout.engine import delta_version


def test_one_token_update_carries_the_version_loaded_now() -> None:
    assert delta_version(before=3, now=3, num_tokens=1) == 3
    assert delta_version(before=3, now=4, num_tokens=1) == 4  # sampled after the load


def test_several_tokens_across_a_load_carry_the_older_version() -> None:
    assert delta_version(before=3, now=4, num_tokens=8) == 3  # some were sampled before the load: over-estimate
    assert delta_version(before=5, now=5, num_tokens=8) == 5  # no load in between: exact


def test_request_seed_depends_on_run_group_sample_and_progress_only() -> None:
    from rlplat.rollout.engine import request_seed
    from rlplat.types import FinishReason, Sample

    def sample(group: int, index: int, tokens: int = 0) -> Sample:
        s = Sample(group_id=group, sample_index=index, prompt_id=99, prompt_token_ids=[5, 6])
        s.extend([7] * tokens, [-1.0] * tokens, 0, FinishReason.PENDING)
        return s

    seed = request_seed(0, sample(3, 1))
    assert seed == request_seed(0, sample(3, 1)) and 0 <= seed < 2**32  # stable, and fits vLLM's seed
    others = {request_seed(1, sample(3, 1)), request_seed(0, sample(4, 1)), request_seed(0, sample(3, 2)),
              request_seed(0, sample(3, 1, tokens=5))}
    assert seed not in others and len(others) == 4
