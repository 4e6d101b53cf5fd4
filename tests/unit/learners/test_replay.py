"""ReMix replay buffer: window of policy versions, share p of replayed groups, clamping, reincarnation."""

from __future__ import annotations

from rlplat.config import RemixConfig
from rlplat.learners.replay import ReplayBuffer
from rlplat.types import Group, Sample


def _groups(version: int, n: int = 4) -> list[Group]:
    out = []
    for k in range(n):
        gid = version * 100 + k
        s = Sample(group_id=gid, sample_index=0, prompt_id=k, prompt_token_ids=[2])
        s.extend([3], [-1.0], version, s.finish_reason)
        out.append(Group(group_id=gid, prompt_id=k, samples=[s]))
    return out


def _on(**kw: object) -> RemixConfig:
    return RemixConfig(enabled=True, **kw)  # type: ignore[arg-type]


def test_inert_while_remix_is_off() -> None:
    buf = ReplayBuffer(RemixConfig(enabled=False), seed=0)
    buf.add(0, _groups(0))
    assert len(buf) == 0 and buf.sample(2, 1, 4) == []


def test_nothing_to_replay_at_the_first_step() -> None:
    assert ReplayBuffer(_on(), seed=0).sample(1, 0, 4) == []


def test_replay_count_is_a_share_p_of_the_batch() -> None:
    buf = ReplayBuffer(_on(p_off_policy=0.4), seed=0)
    assert buf.num_replay_groups(4) == 3  # 4 * 0.4 / 0.6 = 2.67: 3 of 7 groups (43%) are replayed
    assert buf.num_replay_groups(6) == 4  # 4 of 10
    assert ReplayBuffer(_on(p_off_policy=0.5), seed=0).num_replay_groups(4) == 4


def test_window_keeps_the_last_n_versions() -> None:
    buf = ReplayBuffer(_on(replay_versions=2), seed=0)
    for v in range(4):
        buf.add(v, _groups(v, n=8))
    assert buf.versions == [2, 3] and len(buf) == 16
    picked = buf.sample(5, 4, 8)  # 8 fresh groups, p 0.4 -> 5 replayed, lags 1..2 -> versions 3 and 2
    assert len(picked) == 5
    versions = {g.samples[0].policy_versions[0] for g in picked}
    assert versions <= {2, 3}
    assert len({g.group_id for g in picked}) == len(picked)  # no group twice


def test_early_lags_are_clamped_to_the_oldest_held_version() -> None:
    buf = ReplayBuffer(_on(replay_versions=2, p_off_policy=0.4), seed=0)
    buf.add(0, _groups(0, n=2))
    picked = buf.sample(2, 1, 4)  # wants 3 groups, lag 2 clamps to lag 1; only 2 groups exist
    assert sorted(g.group_id for g in picked) == [0, 1]


def test_no_replay_after_reincarnation() -> None:
    buf = ReplayBuffer(_on(reincarnation_step=3), seed=0)
    buf.add(1, _groups(1))
    buf.add(2, _groups(2))
    assert len(buf.sample(3, 3, 4)) == 3
    assert buf.sample(4, 3, 4) == []


def test_sampling_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[int]:
        buf = ReplayBuffer(_on(replay_versions=3), seed=seed)
        for v in range(3):
            buf.add(v, _groups(v, n=10))
        return [g.group_id for g in buf.sample(4, 3, 12)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_state_round_trip_resumes_the_same_draws() -> None:
    buf = ReplayBuffer(_on(replay_versions=3), seed=5)
    for v in range(3):
        buf.add(v, _groups(v, n=10))
    buf.sample(4, 3, 6)
    saved = buf.state()
    expected = [g.group_id for g in buf.sample(5, 3, 12)]
    restored = ReplayBuffer(_on(replay_versions=3), seed=0)
    restored.load_state(saved)
    assert [g.group_id for g in restored.sample(5, 3, 12)] == expected
