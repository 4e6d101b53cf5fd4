"""Two `rlplat train` runs on one machine are independent: each starts its own local Ray (the second does not attach
to the first's), the shorter ends first and the longer still finishes. While both run, nothing of either run (Ray,
the engines, the learner) listens beyond 127.0.0.1. Real Ray, real vLLM (CPU), the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _train(model: Path, out: Path, steps: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rlplat", "train", "configs/smoke/grpo.yaml", f"model.path={model}",
           f"experiment.output_dir={out}", f"experiment.num_steps={steps}", "checkpoint.every_steps=0",
           "data.num_eval_prompts=4", "cluster.num_cpus=4", "--no-progress"]
    out.mkdir(parents=True)
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:  # no pipe to fill up
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""}, stdout=stdout, stderr=stderr)


def _finish(proc: subprocess.Popen, out: Path, timeout_s: float) -> tuple[str, str]:
    proc.wait(timeout=timeout_s)
    return (out / "stdout.txt").read_text(), (out / "stderr.txt").read_text()


def _listening(proc: subprocess.Popen) -> set[str]:
    """Addresses every process of a run (the driver and everything under it) listens on, as 'ip:port'."""
    found = set()
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for p in tree:
        try:
            found |= {f"{c.laddr.ip}:{c.laddr.port}" for c in p.net_connections("tcp")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return found


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"the run ended early with status {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(1)


def test_two_concurrent_runs_both_finish(tiny_model_dir: Path, tmp_path: Path) -> None:
    short = _train(tiny_model_dir, tmp_path / "short", 2)
    long = None
    try:
        _wait_for(tmp_path / "short" / "logs" / "engine_0.log", short, 300)  # its Ray and its engine are up
        long = _train(tiny_model_dir, tmp_path / "long", 6)
        _wait_for(tmp_path / "long" / "logs" / "engine_0.log", long, 300)
        time.sleep(5)  # both engines started (or starting): collect what the two runs listen on
        listening = _listening(short) | _listening(long)
        short_out, short_err = _finish(short, tmp_path / "short", 600)
        assert short.returncode == 0, short_err[-3000:]
        assert long.poll() is None, "the longer run ended with the shorter one"
        long_out, long_err = _finish(long, tmp_path / "long", 600)
        assert long.returncode == 0, long_err[-3000:]
    finally:
        for p in (short, long):
            if p is not None and p.poll() is None:
                p.kill()
    for err in (short_err, long_err):
        assert "Started a local Ray instance" in err and "Connecting to existing Ray cluster" not in err
    assert "MLflow run" in short_out and "MLflow run" in long_out
    print(f"listening: {sorted(listening)}")
    assert listening and all(a.startswith(("127.0.0.1:", "::ffff:127.0.0.1:")) for a in listening), listening
