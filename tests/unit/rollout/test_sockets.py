"""Engine socket directories (rlplat/rollout/sockets.py): private to an engine, and those of dead owners removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rlplat.rollout import sockets


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_private_dir_is_made_for_this_process_and_named_in_the_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("VLLM_RPC_BASE_PATH", raising=False)
    path = sockets.private_socket_dir(tmp_path)
    assert path.is_dir() and path.parent == tmp_path
    assert sockets.owner_pid(path) == os.getpid()
    assert os.environ["VLLM_RPC_BASE_PATH"] == str(path)


def test_orphans_of_dead_owners_go_and_a_live_owners_stay(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("VLLM_RPC_BASE_PATH", raising=False)
    dead = tmp_path / f"rlplat-vllm-{_dead_pid()}-x1"
    live = tmp_path / f"rlplat-vllm-{os.getpid()}-x2"
    other = tmp_path / "rlplat-vllm-notapid"  # not ours to judge
    for d in (dead, live, other):
        d.mkdir()
        (d / "sock").write_text("")
    new = sockets.private_socket_dir(tmp_path)
    assert not dead.exists()
    assert live.exists() and other.exists() and new.exists()


def test_owner_pid_reads_only_our_names() -> None:
    assert sockets.owner_pid(Path("/tmp/rlplat-vllm-1234-abcd")) == 1234
    assert sockets.owner_pid(Path("/tmp/rlplat-vllm-abcd")) is None
    assert sockets.owner_pid(Path("/tmp/0000-1234")) is None
