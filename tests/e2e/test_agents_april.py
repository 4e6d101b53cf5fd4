"""Tool-calling trajectories with APRIL end to end (real Ray, real vLLM on CPU, the real sandbox): a tiny BPE chat
model that has memorised one tool-using conversation (call the python tool, read its output, answer with a code
block) trains with the `code_tests` reward; a step stops at N complete groups and its unfinished trajectories wait
in the partial buffer; a rollout actor is killed in the middle of step 1's trajectories; the run checkpoints,
stops, and `--resume` continues the buffered trajectories from the checkpoint.

Why trajectories are cut: each step the group with the lowest id among those played (the oldest: a buffered one
before fresh ones) leads, and every other group's replies wait until the leader is complete, so the leader completes
first and APRIL stops the step with the others mid-trajectory (a fixed order, not a race: an earlier version held
the others back 3 s and failed on a slow machine); the step-2 checkpoint holds a trajectory cut mid-way, and after
--resume the buffered group leads step 3, so its cut trajectories are continued and trained.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from rlplat import checkpoint as ck
from rlplat.config import load_config
from rlplat.driver import loop
from rlplat.types import Group, TrainBatch
from tests.conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow

CALL = '<tool_call>\n{"name": "python", "arguments": {"code": "print(2 + 3)"}}\n</tool_call>'
ANSWER = "```python\ndef add(a, b):\n    return a + b\n```"
TESTS = ["assert add(1, 2) == 3", "assert add(-4, 4) == 0"]
PROMPT = "Write add(a, b)."


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BPE chat model after ~100 full-batch Adam steps on one conversation (CALL, the python tool's real
    reply, ANSWER), rendered with the python tool's schema as at rollout: it then samples that conversation at a
    low temperature (~20 s on this machine)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlplat.agents.tool_calls import parse_hermes
    from rlplat.agents.tools import build_toolset
    from rlplat.models import TinyModelShape, write_tiny_model

    path = write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-tools", tokenizer="bpe",
                            shape=TinyModelShape(max_position_embeddings=1024))
    tok = AutoTokenizer.from_pretrained(path)
    tools = build_toolset(("python",))
    reply = asyncio.run(tools.call_all(parse_hermes(CALL)))[0].message()
    conv = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": CALL}, reply,
            {"role": "assistant", "content": ANSWER}]
    schemas = tools.schemas()
    prompt = tok.apply_chat_template(conv[:1], tools=schemas, add_generation_prompt=True, tokenize=True,
                                     return_dict=False)
    ids = torch.tensor([tok.apply_chat_template(conv, tools=schemas, tokenize=True, return_dict=False)])
    labels = ids.clone()
    labels[0, :len(prompt)] = -100
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine: one thread is several times faster than the default
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(200):
            loss = model(input_ids=ids, labels=labels).loss
            if loss.item() < 0.02:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.02, loss.item()
        model.save_pretrained(path)
    finally:
        torch.set_num_threads(threads)
    return path


def _write_data(out: Path) -> Path:
    path = out / "add.jsonl"
    with open(path, "w") as f:
        for _ in range(8):  # one prompt: the tiny model reproduces its conversation only after that exact prompt
            f.write(json.dumps({"messages": [{"role": "user", "content": PROMPT}], "tests": TESTS,
                                "answer": "add"}) + "\n")
    return path


def _cfg(model: Path, out: Path, data: Path, num_steps: int):
    return load_config(ROOT / "configs/smoke/grpo.yaml", [
        *smoke_overrides(model, out), f"experiment.num_steps={num_steps}", f"data.train_files=[{data}]",
        "data.prompt_key=messages", "reward.terms=[{name: code_tests}]",
        "agent.tools=[python]", "agent.max_turns=3", "agent.max_new_tokens_per_turn=96",
        "agent.sandbox.max_concurrency=1", "rollout.max_new_tokens=256", "rollout.temperature=0.3",
        "rollout.num_prompts_per_step=1", "rollout.num_samples_per_prompt=2", "rollout.partial.enabled=true",
        "rollout.partial.over_provision=2.0", "checkpoint.every_steps=1",
        # the test is about the trajectories; a small step keeps the memorised behaviour. No eval_files: no
        # evaluation, which would play trajectories too (before step 1, where the actor is to be killed)
        "learner.lr=1.0e-5"])


def _trained(out: Path) -> dict[int, list[int]]:
    rows = [json.loads(x) for x in (out / "trained_groups.jsonl").read_text().splitlines()]
    return {r["step"]: r["group_ids"] for r in rows if "group_ids" in r}  # not the resume marker lines


def test_tool_trajectories_with_april_survive_a_killed_actor_and_resume(ray_session, tool_model: Path,
                                                                       tmp_path: Path, monkeypatch) -> None:
    from rlplat.agents.april import AgentAprilManager
    from rlplat.agents.loop import AgentLoop, TrajectoryGroup
    from rlplat.driver.workers import Workers

    data, out = _write_data(tmp_path), tmp_path / "run"
    started: list[Workers] = []
    start = Workers.start.__func__  # type: ignore[attr-defined]

    def spy_start(cls: type[Workers], *args: Any, **kwargs: Any) -> Workers:
        started.append(start(cls, *args, **kwargs))
        return started[-1]

    monkeypatch.setattr(Workers, "start", classmethod(spy_start))
    killed = threading.Event()
    respond, play = AgentLoop.respond, AgentAprilManager._play
    leader: list[TrajectoryGroup] = []  # this attempt's leading group: the lowest id among the unfinished played

    async def play_with_a_leader(self: AgentAprilManager, running: list[TrajectoryGroup], *args: Any) -> Any:
        leader[:] = [min((g for g in running if not g.is_complete), key=lambda g: g.group_id)]
        return await play(self, running, *args)

    async def kill_once_and_hold_back(self: AgentLoop, trajectories: Any, turns: Any) -> Any:
        """At the first model turn that ends (step 1) the engine is killed: the other trajectories' first turns are
        in flight on it, and this one's tools are cut when the step fails (its turn is kept done, its tools run
        again). Every step, the replies of groups other than the leader wait until the leader is complete (at most
        5 minutes, so that a broken run fails its assertions instead of hanging), so APRIL cuts them mid-way."""
        if not killed.is_set():
            killed.set()
            started[-1].kill_engine(0)
        waited_s = 0.0
        while (any(t.sample.group_id != leader[0].group_id for t in trajectories) and not leader[0].is_complete
               and waited_s < 300):
            await asyncio.sleep(0.05)
            waited_s += 0.05
        return await respond(self, trajectories, turns)

    monkeypatch.setattr(AgentAprilManager, "_play", play_with_a_leader)
    monkeypatch.setattr(AgentLoop, "respond", kill_once_and_hold_back)
    batches: list[TrainBatch] = []
    make_batch = loop.make_batch

    def spy_batch(advantage: str, groups: list[Group]) -> TrainBatch:
        batches.append(make_batch(advantage, groups))
        return batches[-1]

    monkeypatch.setattr(loop, "make_batch", spy_batch)

    # run 1: steps 1-2, the actor killed mid-trajectory in step 1, checkpoints at both steps
    first = loop.train(_cfg(tool_model, out, data, 2), progress=False)
    client = MlflowClient(first.tracking_uri)
    metrics = client.get_run(first.run_id).data.metrics
    assert killed.is_set() and metrics["faults/rollout_restarts"] >= 1
    assert metrics["agent/tool_use_rate"] > 0 and metrics["agent/turns_mean"] >= 2  # the python tool was used
    rewards = [m.value for m in client.get_metric_history(first.run_id, "rollout/reward_mean")]
    assert max(rewards) > 0  # code_tests ran the answers' programs against the row's tests
    saved = ck.load_driver_state(out / "checkpoints" / "step_000002")
    assert saved.partial_buffer and all(isinstance(g, TrajectoryGroup) for g in saved.partial_buffer)
    cut = {(t.sample.group_id, t.sample.sample_index): t.sample for g in saved.partial_buffer
           for t in g.trajectories if not t.sample.is_finished}
    assert any(s.num_response_tokens for s in cut.values()), "no trajectory was cut mid-way at the step-2 checkpoint"
    unfinished = {gid for gid, _ in cut}
    assert metrics["april/tokens_buffered"] == sum(g.group.num_response_tokens for g in saved.partial_buffer)
    assert metrics["april/tokens_generated"] == metrics["april/tokens_trained"] + metrics["april/tokens_buffered"]

    # run 2: --resume to step 3: the buffered trajectories continue
    batches.clear()
    second = loop.train(_cfg(tool_model, out, data, 3), progress=False, resume=True)
    assert second.run_id == first.run_id
    continued = client.get_metric_history(second.run_id, "april/trajectories_continued")
    assert any(m.step == 3 and m.value >= 1 for m in continued), continued
    trained3 = set(_trained(out)[3])
    assert unfinished <= trained3  # restored, and (leading step 3) completed and trained
    for s in (s for b in batches for s in b.samples):
        s.validate()
        assert s.is_finished and s.loss_mask[0] == 1 and s.loss_mask[-1] == 1
    resumed = [s for b in batches for s in b.samples if (s.group_id, s.sample_index) in cut]
    for s in resumed:  # continued, not restarted: the checkpoint's tokens, then tokens of the resumed policy
        before = cut[(s.group_id, s.sample_index)]
        n = before.num_response_tokens
        assert (s.response_token_ids[:n], s.loss_mask[:n], s.logp_behaviour[:n], s.policy_versions[:n]) == (
            before.response_token_ids, before.loss_mask, before.logp_behaviour, before.policy_versions)
        assert s.num_response_tokens > n
        assert {v for v, m in zip(s.policy_versions[n:], s.loss_mask[n:], strict=True) if m} == {saved.policy_version}
    assert resumed
