"""The policy version recorded for a streamed update (rlplat.rollout.engine.delta_version), by hand."""

from __future__ import annotations

from rlplat.rollout.engine import delta_version


def test_one_token_update_carries_the_version_loaded_now() -> None:
    assert delta_version(before=3, now=3, num_tokens=1) == 3
    assert delta_version(before=3, now=4, num_tokens=1) == 4  # sampled after the load


def test_several_tokens_across_a_load_carry_the_older_version() -> None:
    assert delta_version(before=3, now=4, num_tokens=8) == 3  # some were sampled before the load: over-estimate
    assert delta_version(before=5, now=5, num_tokens=8) == 5  # no load in between: exact
