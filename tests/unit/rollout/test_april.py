"""APRIL logic with a fake async worker: buffer FIFO, whole groups, token ledger, over-provisioning, extras kept.

The fake worker generates one token per sample per event-loop turn (token id = position in the response,
log-prob = -0.01 * position), continues from whatever the sample already holds with the remaining budget, and on `abort()` stops
its in-flight calls, which return their samples partial and PENDING: the same contract as `RolloutEngine`.
"""

from __future__ import annotations

import asyncio
import copy
import math

import pytest

from rlplat.config import ConfigError, load_config
from rlplat.rollout.april import PartialBuffer
from rlplat.rollout.april_manager import AprilManager
from rlplat.types import FinishReason, Group, Sample, SamplingOptions, TokenLedger, off_policy_token_fraction

G = 3  # samples per group


class FakeWorker:
    """In-place (like RolloutEngine) or returning copies (like a Ray actor)."""

    def __init__(self, *, copies: bool = False, fail: bool = False) -> None:
        self.copies, self.fail = copies, fail
        self.calls: list[list[tuple[int, int]]] = []  # (group_id, sample_index) per generate call
        self._live: dict[int, dict[str, bool]] = {}  # call id -> {"aborted": ...}, with its sample count
        self._sizes: dict[int, int] = {}
        self.num_aborts = 0

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        if self.fail:
            raise RuntimeError("engine died")
        self.calls.append([(s.group_id, s.sample_index) for s in samples])
        if self.copies:
            samples = copy.deepcopy(samples)
        call = len(self.calls)
        self._live[call], self._sizes[call] = {"aborted": False}, len(samples)
        try:
            while not self._live[call]["aborted"]:
                running = [s for s in samples if not s.is_finished]
                if not running:
                    break
                await asyncio.sleep(0)  # one token per sample per event-loop turn: deterministic order
                if self._live[call]["aborted"]:
                    break
                for s in running:
                    pos = s.num_response_tokens
                    done = pos + 1 >= sampling.max_new_tokens
                    finish = FinishReason.LENGTH if done else FinishReason.PENDING
                    s.extend([pos], [-0.01 * pos], policy_version, finish)
        finally:
            del self._live[call], self._sizes[call]
        return samples

    async def abort(self) -> int:
        self.num_aborts += 1
        for flag in self._live.values():
            flag["aborted"] = True
        return sum(self._sizes.values())


def make_fresh(start: int = 0):
    """fresh(k) -> k new groups with increasing ids; `.calls` records every k asked for."""
    state = {"next": start, "calls": []}

    def fresh(k: int) -> list[Group]:
        state["calls"].append(k)
        out = []
        for _ in range(k):
            gid = state["next"]
            state["next"] += 1
            samples = [Sample(group_id=gid, sample_index=i, prompt_id=gid, prompt_token_ids=[1, 2]) for i in range(G)]
            out.append(Group(group_id=gid, prompt_id=gid, samples=samples))
        return out

    fresh.state = state  # type: ignore[attr-defined]
    return fresh


def budget_by_parity(long: int = 200, short: int = 3):
    """Even group ids get a short budget, odd ones a long one."""
    return lambda g: short if g.group_id % 2 == 0 else long


def collect(mgr: AprilManager, n: int, fresh, version: int, budget_for=None):
    return asyncio.run(mgr.collect(n, fresh, SamplingOptions(max_new_tokens=50), version, budget_for=budget_for))


def assert_whole(groups: list[Group]) -> None:
    for g in groups:
        assert [s.sample_index for s in g.samples] == list(range(G))
        assert all(s.group_id == g.group_id for s in g.samples)
        g.validate()


# --------------------------------------------------------------------------------------------------- pure parts
def _group(gid: int, versions_per_sample: list[list[int]], finished: bool = True) -> Group:
    samples = []
    for i, versions in enumerate(versions_per_sample):
        s = Sample(group_id=gid, sample_index=i, prompt_id=gid, prompt_token_ids=[1])
        for v in versions:
            s.extend([7], [-1.0], v, FinishReason.STOP if finished else FinishReason.PENDING)
        samples.append(s)
    return Group(group_id=gid, prompt_id=gid, samples=samples)


def test_buffer_fifo_front_back_and_state_round_trip() -> None:
    buf = PartialBuffer([_group(1, [[0]]), _group(2, [[0, 0]])])
    buf.push_back([_group(3, [[1]])])
    buf.push_front([_group(4, [[1]]), _group(5, [[1]])])
    assert [g.group_id for g in buf.groups] == [4, 5, 1, 2, 3]
    assert buf.num_tokens == 6
    saved = buf.state()
    assert [g.group_id for g in buf.pop_front(2)] == [4, 5]
    saved[0].samples[0].response_token_ids.append(99)  # state() is a copy
    assert buf.groups[0].samples[0].response_token_ids == [7]
    restored = PartialBuffer()
    restored.load_state(buf.state())
    assert restored.state() == buf.state()
    assert [g.group_id for g in restored.drop_older_than(1)] == [1, 2]
    assert [g.group_id for g in restored.groups] == [3]


def test_off_policy_token_fraction_counts_model_tokens_of_older_versions() -> None:
    g = _group(1, [[0, 0, 1], [1, 1, 1]])
    g.samples[1].loss_mask[0] = 0  # an environment token: not counted
    assert off_policy_token_fraction([g], current_version=1) == pytest.approx(2 / 5)
    assert off_policy_token_fraction([g], current_version=0) == 0.0
    assert off_policy_token_fraction([], current_version=3) == 0.0


def test_ledger_balance_check() -> None:
    TokenLedger(generated=10, trained=4, buffered=5, dropped=1).check()
    with pytest.raises(AssertionError, match="out of balance"):
        TokenLedger(generated=10, trained=4, buffered=5).check()


def test_config_rejects_bad_partial_settings(tmp_path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("model:\n  path: x\n")
    cfg = load_config(spec, ["rollout.partial.enabled=true", "rollout.partial.over_provision=1.5"])
    assert cfg.rollout.partial.enabled and cfg.rollout.partial.over_provision == 1.5
    assert load_config(spec).rollout.partial.enabled is False
    with pytest.raises(ConfigError, match="over_provision must be >= 1"):
        load_config(spec, ["rollout.partial.over_provision=0.5"])
    with pytest.raises(ConfigError, match="max_new_tokens must be >= 1"):
        load_config(spec, ["rollout.max_new_tokens=0"])
    with pytest.raises(ConfigError, match="max_age_in_versions"):
        load_config(spec, ["rollout.partial.max_age_in_versions=-1"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(spec, ["rollout.partial.overprovision=2"])


# --------------------------------------------------------------------------------------------------- the manager
@pytest.mark.parametrize("copies", [False, True], ids=["in_place", "copies"])
def test_step_returns_n_complete_groups_and_buffers_interrupted_ones(copies: bool) -> None:
    worker = FakeWorker(copies=copies)
    mgr = AprilManager([worker], over_provision=2.0)
    fresh = make_fresh()
    step = collect(mgr, 2, fresh, version=0, budget_for=budget_by_parity())
    assert fresh.state["calls"] == [4]  # N' = 2 * 2 groups issued
    assert sorted(g.group_id for g in step.groups) == [0, 2]  # the short ones
    assert all(g.is_complete for g in step.groups)
    assert_whole(step.groups)
    buffered = mgr.buffer.groups
    assert [g.group_id for g in buffered] == [1, 3]
    for g in buffered:  # interrupted mid-generation: partial tokens, still pending
        assert_whole([g])
        assert all(0 < s.num_response_tokens < 200 and not s.is_finished for s in g.samples)
    m = step.metrics
    assert m["april/tokens_generated"] == m["april/tokens_trained"] + m["april/tokens_buffered"]
    assert m["april/tokens_trained"] == 2 * G * 3 and m["april/tokens_buffered"] == mgr.buffer.num_tokens
    assert m["april/groups_buffered"] == 2 and m["april/num_groups_interrupted"] == 2
    assert m["april/num_requests_aborted"] == 2 * G and worker.num_aborts >= 1
    assert m["rollout/off_policy_token_fraction"] == 0.0
    assert 0.0 <= m["april/engine_idle_share"] <= 1.0


def test_interrupted_groups_continue_first_next_step_from_their_tokens() -> None:
    worker = FakeWorker(copies=True)
    mgr = AprilManager([worker], over_provision=2.0)
    fresh = make_fresh()
    budget = lambda g: 40 if g.group_id in (1, 3) else 3  # noqa: E731
    collect(mgr, 2, fresh, version=0, budget_for=budget)
    prefix = {(s.group_id, s.sample_index): list(s.response_token_ids) for g in mgr.buffer.groups for s in g.samples}
    # Next step: the two buffered long groups first, then two fresh short ones (4, 5), which finish first.
    worker.calls.clear()
    step = collect(mgr, 2, fresh, version=1, budget_for=budget)
    assert fresh.state["calls"] == [4, 2]
    assert [c[0][0] for c in worker.calls[:2]] == [1, 3]  # the buffer is served first, in FIFO order
    assert sorted(g.group_id for g in step.groups) == [4, 5]
    assert [g.group_id for g in mgr.buffer.groups] == [1, 3]
    # Third step: no fresh prompts left, so the continued groups must finish.
    step = collect(mgr, 2, lambda k: [], version=2, budget_for=budget)
    assert sorted(g.group_id for g in step.groups) == [1, 3]
    for g in step.groups:
        for s in g.samples:
            n0 = len(prefix[(s.group_id, s.sample_index)])
            assert s.response_token_ids == list(range(40))  # continued from its tokens, never restarted
            assert s.logp_behaviour == pytest.approx([-0.01 * p for p in range(40)])
            assert s.policy_versions[:n0] == [0] * n0 and set(s.policy_versions[n0:]) <= {1, 2}
            assert len(set(s.policy_versions)) >= 2
    assert step.metrics["rollout/off_policy_token_fraction"] > 0
    assert step.metrics["april/num_samples_multi_version"] == 2 * G
    mgr.ledger.check()
    assert mgr.ledger.trained == mgr.ledger.generated - mgr.ledger.buffered


def test_finished_members_wait_in_the_buffer_and_are_not_regenerated() -> None:
    # Group 1: sample 0 is short, the others long. Group 0 is short and completes the step (N = 1).
    budget = {0: 3, 1: 200}

    class PerSample(FakeWorker):
        async def generate(self, samples, sampling, policy_version):
            if samples and samples[0].group_id == 1 and samples[0].sample_index == 0 and len(samples) == G:
                first = await super().generate(samples[:1], SamplingOptions(max_new_tokens=2), policy_version)
                rest = await super().generate(samples[1:], sampling, policy_version)
                return first + rest
            return await super().generate(samples, sampling, policy_version)

    worker = PerSample()
    mgr = AprilManager([worker], over_provision=2.0)
    step = asyncio.run(mgr.collect(1, make_fresh(), SamplingOptions(max_new_tokens=50), 0,
                                   budget_for=lambda g: budget[g.group_id]))
    assert [g.group_id for g in step.groups] == [0]
    (waiting,) = mgr.buffer.groups
    assert waiting.group_id == 1 and not waiting.is_complete
    assert waiting.samples[0].is_finished and waiting.samples[0].num_response_tokens == 2
    worker.calls.clear()
    asyncio.run(mgr.collect(1, lambda k: [], SamplingOptions(max_new_tokens=50), 1, budget_for=lambda g: 5))
    assert worker.calls[0] == [(1, 1), (1, 2)]  # only the unfinished siblings are sent again
    assert len(mgr.buffer) == 0
    mgr.ledger.check()


def test_extra_complete_groups_go_to_the_front_of_the_buffer_and_are_served_first() -> None:
    worker = FakeWorker()
    mgr = AprilManager([worker], over_provision=2.0)
    fresh = make_fresh()
    step = collect(mgr, 2, fresh, version=0, budget_for=lambda g: 4)  # all four finish in the same wait batch
    assert len(step.groups) == 2
    extras = mgr.buffer.groups
    assert len(extras) == 2 and all(g.is_complete for g in extras)
    assert step.metrics["april/num_groups_extra_complete"] == 2
    assert step.metrics["april/num_requests_aborted"] == 0
    worker.calls.clear()
    nxt = collect(mgr, 2, fresh, version=1, budget_for=lambda g: 4)
    assert [g.group_id for g in nxt.groups] == [g.group_id for g in extras]
    assert fresh.state["calls"] == [4] and worker.calls == []  # nothing generated: the extras were enough
    assert nxt.metrics["rollout/off_policy_token_fraction"] == 1.0  # all sampled by version 0
    mgr.ledger.check()
    assert mgr.ledger.trained == mgr.ledger.generated == 4 * G * 4


@pytest.mark.parametrize(("n", "over", "issued"), [(3, 1.5, 5), (4, 1.0, 4), (2, 2.0, 4), (3, 1.01, 4)])
def test_over_provision_sets_groups_issued(n: int, over: float, issued: int) -> None:
    mgr = AprilManager([FakeWorker()], over_provision=over)
    fresh = make_fresh()
    step = collect(mgr, n, fresh, version=0, budget_for=lambda g: 3 + g.group_id)
    assert fresh.state["calls"] == [issued] == [math.ceil(over * n - 1e-9)]
    assert len(step.groups) == n and step.metrics["april/num_groups_issued"] == issued
    assert len(mgr.buffer) == issued - n
    mgr.ledger.check()


def test_over_provision_one_is_synchronous_full_batch() -> None:
    worker = FakeWorker()
    mgr = AprilManager([worker], over_provision=1.0)
    step = collect(mgr, 4, make_fresh(), version=0, budget_for=budget_by_parity(long=30))
    assert sorted(g.group_id for g in step.groups) == [0, 1, 2, 3] and len(mgr.buffer) == 0
    assert worker.num_aborts == 0 and step.metrics["april/tokens_buffered"] == 0
    assert step.metrics["april/tokens_generated"] == step.metrics["april/tokens_trained"] == 2 * G * (3 + 30)


def test_groups_spread_over_workers_by_in_flight_samples() -> None:
    workers = [FakeWorker(copies=True), FakeWorker(copies=True)]
    mgr = AprilManager(workers, over_provision=2.0)
    fresh = make_fresh()
    collect(mgr, 2, fresh, version=0, budget_for=budget_by_parity())
    assert [len(w.calls) for w in workers] == [2, 2]  # 4 equal groups: 2 each
    for w in workers:  # a group's samples always go to one worker together
        assert all(len({gid for gid, _ in call}) == 1 and len(call) == G for call in w.calls)
    # Make one buffered group small (one unfinished sample): the next fresh group goes to the other worker.
    for w in workers:
        w.calls.clear()
    small = mgr.buffer.groups[0]
    for s in small.samples[1:]:
        s.finish_reason = FinishReason.LENGTH
    collect(mgr, 2, fresh, version=1, budget_for=budget_by_parity(long=20))
    calls = [[len(c) for c in w.calls] for w in workers]
    assert calls == [[1, G], [G, G]]  # A: the small group (1 sample), then a fresh one (A still had fewer)


def test_max_age_drops_stale_groups_and_counts_their_tokens() -> None:
    mgr = AprilManager([FakeWorker()], over_provision=2.0, max_age_in_versions=1)
    fresh, budget = make_fresh(), budget_by_parity()
    collect(mgr, 2, fresh, version=0, budget_for=budget)
    stale_tokens = mgr.buffer.num_tokens
    assert stale_tokens > 0
    step = collect(mgr, 2, fresh, version=2, budget_for=budget)  # tokens of version 0 are 2 versions old: dropped
    assert step.metrics["april/num_groups_dropped"] == 2
    assert step.metrics["april/tokens_dropped"] == stale_tokens
    assert step.metrics["april/num_groups_from_buffer"] == 0
    mgr.ledger.check()
    keep = AprilManager([FakeWorker()], over_provision=2.0, max_age_in_versions=1)
    collect(keep, 2, make_fresh(), version=0, budget_for=budget)
    step = collect(keep, 2, make_fresh(100), version=1, budget_for=budget)  # one version old: kept
    assert step.metrics["april/tokens_dropped"] == 0 and step.metrics["april/num_groups_from_buffer"] == 2


def test_state_round_trip_continues_in_a_new_manager() -> None:
    mgr = AprilManager([FakeWorker()], over_provision=2.0)
    budget = budget_by_parity(long=30)
    collect(mgr, 2, make_fresh(), version=0, budget_for=budget)
    saved, ledger = mgr.state(), copy.copy(mgr.ledger)
    resumed = AprilManager([FakeWorker(copies=True)], over_provision=2.0)
    resumed.load_state(saved, ledger)
    assert resumed.state() == saved and resumed.ledger == mgr.ledger
    step = collect(resumed, 2, lambda k: [], version=1, budget_for=budget)
    assert sorted(g.group_id for g in step.groups) == [1, 3]
    assert all(s.response_token_ids == list(range(30)) for g in step.groups for s in g.samples)
    resumed.ledger.check()
    fresh_ledger = AprilManager([FakeWorker()])
    fresh_ledger.load_state(saved)
    assert fresh_ledger.ledger.generated == fresh_ledger.ledger.buffered == sum(g.num_response_tokens for g in saved)


def test_a_worker_error_puts_every_group_back_and_propagates() -> None:
    mgr = AprilManager([FakeWorker(), FakeWorker(fail=True)], over_provision=2.0)
    with pytest.raises(RuntimeError, match="engine died"):
        collect(mgr, 2, make_fresh(), version=0, budget_for=budget_by_parity())
    assert sorted(g.group_id for g in mgr.buffer.groups) == [0, 1, 2, 3]
    mgr.ledger.check()


def test_fewer_groups_when_prompts_run_dry_and_bad_arguments() -> None:
    mgr = AprilManager([FakeWorker()], over_provision=2.0)
    step = collect(mgr, 3, lambda k: make_fresh()(1), version=0)
    assert len(step.groups) == 1
    with pytest.raises(ValueError, match="over_provision"):
        AprilManager([FakeWorker()], over_provision=0.5)
    with pytest.raises(ValueError, match="at least one"):
        AprilManager([])
    with pytest.raises(ValueError, match="num_groups"):
        collect(mgr, 0, make_fresh(), version=0)
