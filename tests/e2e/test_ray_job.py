"""`ray job submit` against a locally started head node runs a short spec to success and logs an MLflow run."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node(tmp_path: Path):
    """`ray start --head --block` in its own process group, so the test stops only this cluster."""
    gcs, dash, agent, agent_grpc, metrics, runtime_env, client = (_free_port() for _ in range(7))
    # Ray 2.60 clusters require token authentication: give the head and the client the same fresh token.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=8",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         # The test session's own Ray already holds the default agent ports: give this head free ones.
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         f"--ray-client-server-port={client}",
         f"--temp-dir={tempfile.mkdtemp(prefix='rlray', dir='/tmp')}"],  # short: Ray's socket paths have a length cap
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        ok = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                            capture_output=True, text=True)
        if ok.returncode == 0:
            break
        time.sleep(2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"ray head node did not come up in 120 s: {ok.stderr[-2000:]}")
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)  # `ray start --block` took the whole 30 s here once; the cluster just has to go
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_ray_job_submit_runs_spec(head_node, tiny_model_dir: Path, tmp_path: Path) -> None:
    address, env = head_node
    out = tmp_path / "job-out"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", "rlplat-test-job",
           "--working-dir", str(ROOT), "--",
           sys.executable, "-m", "rlplat", "train", "configs/smoke/grpo.yaml", f"model.path={tiny_model_dir}",
           f"experiment.output_dir={out}", "experiment.num_steps=2", "--no-progress"]
    deadline = time.time() + 180
    while True:  # the head's job agent comes up a little after its dashboard, later still on a loaded machine
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in done.stdout + done.stderr or time.time() > deadline:
            break
        time.sleep(5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout.lower()
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, "rlplat-test-job"], env=env,
                            capture_output=True, text=True)
    assert "job 'rlplat-test-job' succeeded" in status.stdout.lower(), status.stdout + status.stderr
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("rlplat-smoke").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags.get("rlplat.ray_job_id")
