"""A run's local Ray is its own: `cluster.address: auto` never attaches to another run's private local instance, it
attaches to a cluster named by RAY_ADDRESS (as `ray job submit` sets it); a private instance listens on 127.0.0.1
only; Ray's token file is private. Real Ray in subprocesses (each a fresh driver, as two `rlplat train` would be),
no engines."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlplat.driver import workers

ROOT = Path(__file__).resolve().parents[2]

# A driver: init_ray as `rlplat train` calls it, then report the cluster it is on and what its Ray listens on.
DRIVER = textwrap.dedent("""
    import json, os, subprocess, sys
    import psutil, ray
    from rlplat.config import load_config
    from rlplat.driver.workers import init_ray

    init_ray(load_config("configs/smoke/grpo.yaml", ["cluster.num_cpus=1", *sys.argv[1:]]))
    gcs = ray.get_runtime_context().gcs_address
    session = ray._private.worker._global_node.get_session_dir_path()
    pids = {p.pid for p in psutil.process_iter(["cmdline"]) if session in " ".join(p.info["cmdline"] or [])}
    pids |= {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listening = sorted({c.laddr.ip for pid in pids for c in psutil.Process(pid).net_connections("tcp")
                        if c.status == psutil.CONN_LISTEN})
    print(json.dumps({"gcs": gcs, "listening": listening}), flush=True)
    sys.stdin.read()  # hold the instance until the test closes stdin
    ray.shutdown()
""")


def _start_driver(*overrides: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, dict]:
    import json

    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *overrides], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ADDRESS": "", **(env or {})})
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        proc.wait(timeout=60)
        pytest.fail(f"driver failed: {proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen) -> str:
    try:
        _, err = proc.communicate(input="", timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.mark.slow
def test_auto_never_attaches_to_another_runs_local_instance() -> None:
    """Run A starts its private instance; run B (auto) starts its own, and so does run C when RAY_ADDRESS points at
    A's (it attaches, finds the private mark, says so and leaves); all listen on loopback only."""
    first, a = _start_driver()
    try:
        second, b = _start_driver()
        _stop(second)
        # A default client cannot even reach A's instance (Ray maps 127.0.0.1 to the machine's address, where A does not
        # listen); a client in loopback mode, as Ray is on macOS, can: it attaches, finds the mark and leaves.
        third, c = _start_driver(env={"RAY_ADDRESS": a["gcs"], "RAY_AUTH_MODE": "token",
                                      "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        err = _stop(third)
    finally:
        _stop(first)
    assert len({a["gcs"], b["gcs"], c["gcs"]}) == 3, (a, b, c)
    assert f"the Ray instance at {a['gcs']} is the private local instance of another run" in err
    for info in (a, b, c):
        assert info["gcs"].startswith("127.0.0.1:")
        assert info["listening"] and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in info["listening"]), info


@pytest.mark.slow
def test_auto_attaches_to_a_named_cluster() -> None:
    """RAY_ADDRESS naming a cluster that no run owns (as `ray job submit` or an operator sets it): auto joins it.
    An explicit address never switches Ray's token auth on by itself: RAY_AUTH_MODE=token, as docs/deploy.md says."""
    script = ("import ray, sys; ray.init(address='local', num_cpus=1, include_dashboard=False); "
              "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read(); ray.shutdown()")
    cluster = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "RAY_ADDRESS": ""})
    try:
        address = cluster.stdout.readline().strip()  # type: ignore[union-attr]
        assert address, "the cluster did not start"
        joined, info = _start_driver(env={"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"})
        _stop(joined)
    finally:
        _stop(cluster)
    assert info["gcs"] == address


def test_local_instance_marks_itself_private_and_listens_on_loopback(monkeypatch) -> None:
    """What init_ray asks of Ray for a local instance, without starting one."""
    import ray
    import ray._private.ray_constants as ray_constants
    import ray.experimental.internal_kv as kv

    from rlplat.config import load_config

    seen: dict = {}

    def fake_init(**kwargs):
        seen.update(kwargs, flag=os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
                    cluster=ray_constants.ENABLE_RAY_CLUSTER)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(kv, "_internal_kv_put", lambda key, value, namespace: seen.update(mark=(key, namespace)))
    monkeypatch.setattr(workers, "_private_token_file", lambda: None)
    monkeypatch.setattr(workers, "deliberate_cluster", lambda: False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    workers.init_ray(load_config(ROOT / "configs/smoke/grpo.yaml"))
    assert seen["address"] == "local" and seen["flag"] == "0" and seen["cluster"] is False
    assert seen["mark"] == (workers.PRIVATE_RAY_KEY, "rlplat")
    assert ray_constants.ENABLE_RAY_CLUSTER == before  # restored once the node address is fixed
    seen.clear()
    workers.init_ray(load_config(ROOT / "configs/smoke/grpo.yaml", ["cluster.dashboard_host=0.0.0.0"]))
    assert seen["flag"] is None and seen["cluster"] == before  # the spec asked to be reachable


def test_token_file_is_created_private(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    workers._private_token_file()
    token = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    first = token.read_text()
    token.chmod(0o644)  # as Ray writes it
    workers._private_token_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == first


def test_token_file_left_alone_without_token_auth(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    workers._private_token_file()
    assert not (tmp_path / ".ray").exists()


def test_weight_group_store_listens_on_the_given_address_only() -> None:
    """Rank 0's TCPStore serves on the socket `listen_socket` bound (not on every interface, torch's default); a
    two-rank gloo group over it broadcasts."""
    import threading

    import psutil
    import torch

    from rlplat.rollout import weight_sync

    listener = weight_sync.listen_socket("127.0.0.1")
    host, port = listener.getsockname()[:2]
    received = torch.zeros(3)

    def rank1() -> None:
        group = weight_sync.open_group("gloo", host, port, 1, 2)
        weight_sync.broadcast_tensors(group, [received])

    peer = threading.Thread(target=rank1)
    peer.start()
    group = weight_sync.open_group("gloo", host, port, 0, 2, listener=listener)
    weight_sync.broadcast_tensors(group, [torch.tensor([1.0, 2.0, 3.0])])
    peer.join(timeout=60)
    torch.testing.assert_close(received, torch.tensor([1.0, 2.0, 3.0]))
    store = [c.laddr for c in psutil.Process().net_connections("tcp")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert [a.ip for a in store] == ["127.0.0.1"], store
