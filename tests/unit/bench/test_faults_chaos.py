"""`rlplat bench faults --chaos` without runs: where the kills go, and how two runs' metrics are compared."""

from __future__ import annotations

from rlplat.bench.faults_chaos import KINDS, compare, fault_points, generation_calls


def test_generation_calls_in_loop_order() -> None:
    assert generation_calls(6, 3) == ["eval 0", "step 1", "step 2", "step 3", "eval 3", "step 4", "step 5", "step 6",
                                      "eval 6"]
    assert generation_calls(2, 0) == ["eval 0", "step 1", "step 2", "eval 2"]


def test_fault_points_cover_every_kind_and_target_after_the_first_checkpoint() -> None:
    points = fault_points(5, seed=0, num_steps=6)
    assert [p.kind for p in points] == list(KINDS)
    assert {p.target for p in points} == {"driver", "learner", "rollout"}
    assert all(p.step >= 3 for p in points)  # a checkpoint (step 2) exists to resume from
    for p in points:
        if p.kind == "checkpoint":
            assert (p.chaos.split(":")[1], p.nth_call * 2) == ("checkpoint save", p.step)
        elif p.kind in ("train", "sync"):
            assert p.nth_call == p.step
        else:  # generation calls, evaluations included
            want = f"eval {p.step}" if p.kind == "eval" else f"step {p.step}"
            assert generation_calls(6, 3)[p.nth_call - 1] == want
    assert fault_points(5, seed=0, num_steps=6) == points  # seeded
    assert fault_points(5, seed=1, num_steps=6) != points


def test_compare_finds_each_kind_of_difference() -> None:
    base = {"loss/policy": [(1, 0.5), (2, 0.25)], "eval/exact_match": [(0, 0.0), (2, 0.5)], "time/step_s": [(1, 1.0)]}
    assert compare(base, {**base, "time/step_s": [(1, 9.0)], "resume/from_step": [(2, 1.0)]}) == []
    assert compare(base, {"loss/policy": [(1, 0.5), (2, 0.25), (2, 0.25)], "eval/exact_match": [(0, 0.0), (2, 0.4)],
                          "rollout/reward_mean": [(1, 0.0)]}) == [
        "rollout/reward_mean: not in the uninterrupted run",
        "eval/exact_match: step 2: 0.5 vs 0.4",
        "loss/policy: steps [1, 2] vs [1, 2, 2]",
    ]
    assert compare(base, {"loss/policy": base["loss/policy"]}) == ["eval/exact_match: missing"]
