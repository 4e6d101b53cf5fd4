"""vLLM's /dev/shm segments (rlplat/rollout/shm.py) with real SharedMemory in real processes, without vLLM: listed
while a child maps them, released once it is gone, never while a live process maps them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlplat.rollout import shm

CHILD = """
import sys, time
from multiprocessing import resource_tracker, shared_memory
seg = shared_memory.SharedMemory(create=True, size=4096)
resource_tracker.unregister(seg._name, "shared_memory")  # like a force-killed engine core: nobody unlinks it
print(seg.name, flush=True)
time.sleep(60)
"""


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    path = f"/dev/shm/{proc.stdout.readline().strip()}"
    yield proc, path
    proc.kill()
    proc.wait()
    Path(path).unlink(missing_ok=True)


def test_a_childs_segment_is_listed_kept_while_mapped_and_released_after(child, tmp_path: Path) -> None:
    proc, path = child
    assert path in shm.child_segments()
    ledger = tmp_path / "engine_0.log.shm.json"
    shm.record(ledger, shm.child_segments())
    assert shm.release(ledger) == [] and Path(path).exists()  # still mapped: kept, and still listed
    assert json.loads(ledger.read_text()) == [path]
    proc.kill()
    proc.wait()
    assert shm.release(ledger) == [path]
    assert not Path(path).exists() and not ledger.exists()


def test_an_engine_being_stopped_releases_its_own_segments_while_still_mapped(child, tmp_path: Path) -> None:
    """mapped_too: the name goes at once; the process that maps the segment is not disturbed."""
    proc, path = child
    ledger = tmp_path / "engine_0.log.shm.json"
    shm.record(ledger, shm.child_segments())
    assert shm.release(ledger, mapped_too=True) == [path]
    assert not Path(path).exists() and not ledger.exists() and proc.poll() is None


def test_a_missing_or_damaged_ledger_releases_nothing(tmp_path: Path) -> None:
    assert shm.release(tmp_path / "none.json") == []
    (tmp_path / "bad.json").write_text('["/etc/passwd", ')
    assert shm.release(tmp_path / "bad.json") == []
    (tmp_path / "outside.json").write_text(json.dumps(["/etc/hostname", "/dev/shm/../etc/hostname"]))
    assert shm.release(tmp_path / "outside.json") == [] and Path("/etc/hostname").exists()
