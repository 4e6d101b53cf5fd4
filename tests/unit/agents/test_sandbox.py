"""The sandbox against hostile programs, with the real subprocesses (no mocks). Each case must end within its
limit, leave no process behind (checked in the host's /proc by a token in the command line) and no files."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from rlplat.sandbox import Sandbox, SandboxLimits, SandboxResult, isolation_report, probe_isolation

FAST = SandboxLimits(timeout_s=2.0, cpu_s=2, memory_bytes=512 << 20, file_size_bytes=1 << 20, max_processes=16,
                     max_output_bytes=4096)
ISO = probe_isolation()
needs_namespaces = pytest.mark.skipif(not ISO.namespaces, reason=f"no namespaces here: {isolation_report(ISO)}")


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    with Sandbox(max_concurrency=2, limits=FAST) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def plain() -> Sandbox:
    """No namespaces, no uid drop: the fallback path (rlimits, process group, marker sweep)."""
    with Sandbox(max_concurrency=2, limits=FAST, isolate=False) as sandbox:
        yield sandbox


def _procs_with(token: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in cmdline and state not in ("Z", "X"):  # zombies run nothing
            found.append(int(p))
    return found


def test_prints_and_exits(sb: Sandbox) -> None:
    res = sb.run_sync("import sys\nprint(6 * 7)\nprint('oops', file=sys.stderr)\nsys.exit(3)")
    assert isinstance(res, SandboxResult)
    assert (res.stdout, res.stderr, res.exit_code, res.timed_out, res.truncated) == ("42\n", "oops\n", 3, False, False)
    assert not res.ok and 0 < res.wall_s < 2


def test_stdin_args_and_files(sb: Sandbox) -> None:
    code = "import sys\nprint(sys.stdin.read().upper(), sys.argv[1:], open('data/x.txt').read())"
    res = sb.run_sync(code, stdin="abc", args=["-v", "7"], files={"data/x.txt": "hello"})
    assert res.ok and res.stdout == "ABC ['-v', '7'] hello\n"
    with pytest.raises(ValueError, match="relative path"):
        sb.run_sync("pass", files={"../escape.txt": "x"})
    with pytest.raises(ValueError, match="is the program itself"):
        sb.run_sync("pass", files={"main.py": "x"})


def test_environment_is_cleared(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLPLAT_TEST_SECRET", "hunter2")
    res = sb.run_sync("import os\nprint(sorted(os.environ))")
    assert res.ok
    assert eval(res.stdout) == ["HOME", "LANG", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PATH",
                                "RLPLAT_SANDBOX_RUN", "TMPDIR"]


def test_files_go_to_a_temp_dir_that_is_removed(sb: Sandbox) -> None:
    res = sb.run_sync("import os\nopen('out.txt', 'w').write('x')\nos.makedirs('d/e')\nprint(os.getcwd())")
    workdir = Path(res.stdout.strip())
    assert res.ok and workdir.name.startswith("rlplat-sandbox-")
    assert not workdir.exists()


def test_infinite_loop_is_killed_at_the_deadline(sb: Sandbox) -> None:
    res = sb.run_sync("print('start', flush=True)\nwhile True:\n    pass", limits=SandboxLimits(timeout_s=1.0, cpu_s=5))
    assert res.timed_out and res.exit_code == -9 and res.stdout == "start\n"
    assert 1.0 <= res.wall_s < 2.0


def test_cpu_limit_kills_a_busy_program_before_the_wall_clock(sb: Sandbox) -> None:
    res = sb.run_sync("while True:\n    pass", limits=SandboxLimits(timeout_s=5.0, cpu_s=1))
    assert not res.timed_out and res.exit_code == -9
    assert res.wall_s < 4.5


def test_memory_bomb_fails_cleanly(sb: Sandbox) -> None:
    res = sb.run_sync("x = bytearray(10 * 1024**3)")  # 10 GiB
    assert res.exit_code == 1 and not res.timed_out and "MemoryError" in res.stderr


def test_large_file_write_fails_at_the_file_size_limit(sb: Sandbox) -> None:
    code = "with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'0' * (1 << 20))"  # 1 GiB
    res = sb.run_sync(code)
    assert res.exit_code == 1 and "File too large" in res.stderr


def test_huge_output_is_truncated_without_blocking() -> None:
    # 100 MB still crosses the pipe (read and dropped past the cap): 4 s through `cat` on this box at a slow hour,
    # so a wall limit of its own; a reader that blocked would still hit it
    limits = dataclasses.replace(FAST, timeout_s=20.0, cpu_s=10)
    with Sandbox(max_concurrency=1, limits=limits) as sb:
        res = sb.run_sync("import sys\nsys.stdout.write('x' * 100_000_000)\nprint('tail', file=sys.stderr)")  # 100 MB
    assert res.ok and res.stdout_truncated and not res.stderr_truncated and res.truncated
    assert res.stdout == "x" * FAST.max_output_bytes and res.stderr == "tail\n"


@pytest.mark.parametrize("mode", ["isolated", "plain"])
def test_a_forked_grandchild_does_not_outlive_the_call(mode: str, sb: Sandbox, plain: Sandbox) -> None:
    token = f"grandchild-{uuid.uuid4().hex}"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()  # leave the process group too\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', '{token}'])\n"
        "time.sleep(0.3)\n"
        "print('parent exits')\n"
    )
    res = (sb if mode == "isolated" else plain).run_sync(code)
    assert res.ok and res.stdout == "parent exits\n" and res.wall_s < 1.5
    assert _procs_with(token) == []


def test_a_timed_out_program_and_its_children_are_all_killed(sb: Sandbox) -> None:
    token = f"sleeper-{uuid.uuid4().hex}"
    code = (
        "import os, sys\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'while True: pass', '{token}'])\n"
        "while True:\n    pass\n"
    )
    res = sb.run_sync(code, limits=SandboxLimits(timeout_s=1.0, cpu_s=5))
    assert res.timed_out
    assert _procs_with(token) == []


@pytest.mark.skipif(not ISO.uid_drop and os.geteuid() == 0, reason="root without a uid drop: RLIMIT_NPROC not enforced")
def test_fork_bomb_is_contained(sb: Sandbox) -> None:
    token = f"forkbomb-{uuid.uuid4().hex}"
    code = (
        "import os, sys, time\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        print('limit', flush=True)\n"
        "        time.sleep(0.2)\n"
        "        break\n"
    )
    start = time.monotonic()
    res = sb.run_sync(code, args=[token], limits=SandboxLimits(timeout_s=1.5, cpu_s=2, max_processes=16))
    assert time.monotonic() - start < 3.0
    assert "limit" in res.stdout
    assert _procs_with(token) == []


@needs_namespaces
def test_no_network(sb: Sandbox) -> None:
    code = (
        "import socket\n"
        "for addr in [('1.1.1.1', 80), ('127.0.0.1', 22)]:\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=1)\n"
        "        print('connected', addr)\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__, e.errno)\n"
    )
    res = sb.run_sync(code)
    assert res.ok and "connected" not in res.stdout and "OSError 101" in res.stdout  # ENETUNREACH


@needs_namespaces
def test_cannot_signal_its_parent_or_the_host() -> None:
    code = (
        "import os, signal\n"
        "print('ppid', os.getppid())  # the launcher lives outside the PID namespace\n"
        "try:\n"
        f"    os.kill({os.getpid()}, signal.SIGKILL)  # this test's own pid, seen from the host\n"
        "    print('killed the host process')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    with Sandbox(max_concurrency=1, limits=FAST) as sandbox:
        res = sandbox.run_sync(code)
    # a private /proc: only the program itself, as PID 1
    assert res.ok and res.stdout.splitlines() == ["ppid 0", "ProcessLookupError", "[1]"], res.stdout


@needs_namespaces
def test_hidden_paths_are_not_readable() -> None:
    # a world-readable "run output dir" outside /tmp (/tmp is private in the sandbox anyway)
    from rlplat.sandbox.launcher import private_tmp_dirs

    here = Path(__file__).resolve().parent
    if any(here.is_relative_to(d) for d in private_tmp_dirs()):
        pytest.skip(f"the checkout ({here}) is under a directory the sandbox replaces with its own tmpfs")
    run_dir = tempfile.mkdtemp(prefix=".sandbox-test-run-", dir=here)
    try:
        os.chmod(run_dir, 0o755)
        Path(run_dir, "secret.txt").write_text("api-key")
        os.chmod(Path(run_dir, "secret.txt"), 0o644)
        code = f"import os\nprint(os.listdir({run_dir!r}))\nprint(open({run_dir!r} + '/secret.txt').read())"
        with Sandbox(max_concurrency=1, limits=FAST) as sandbox:
            assert sandbox.run_sync(code).stdout == "['secret.txt']\napi-key\n"  # readable when not hidden
        with Sandbox(max_concurrency=1, limits=FAST, hidden_paths=[run_dir]) as sandbox:
            res = sandbox.run_sync(code)
        assert res.stdout == "[]\n" and "FileNotFoundError" in res.stderr
        assert "api-key" not in res.stdout + res.stderr
    finally:
        shutil.rmtree(run_dir)


@pytest.mark.skipif(not ISO.uid_drop, reason="needs root for the uid drop")
def test_runs_unprivileged_and_cannot_write_outside() -> None:
    code = "import os\nprint(os.getuid())\nopen('/etc/rlplat-sandbox-test', 'w')"
    with Sandbox(max_concurrency=1, limits=FAST) as sandbox:
        res = sandbox.run_sync(code)
    assert int(res.stdout) >= 1_000_000
    assert ("Read-only file system" if ISO.readonly_root else "PermissionError") in res.stderr
    assert not Path("/etc/rlplat-sandbox-test").exists()


@needs_namespaces
def test_scratch_dirs_are_private_and_capped() -> None:
    name = f"rlplat-sandbox-test-{uuid.uuid4().hex}"
    code = (
        "import os\n"
        "print(sorted(os.listdir('/tmp')) == [os.path.basename(os.getcwd())])  # only its own work dir\n"
        f"for d in ('/tmp', '/var/tmp', '/dev/shm'):\n"
        f"    open(os.path.join(d, '{name}'), 'w').write('x')\n"
        "try:\n"
        "    for i in range(8):\n"
        "        open(f'f{i}', 'wb').write(b'0' * (1 << 20))\n"
        "except OSError as e:\n"
        "    print(e.strerror)\n"
    )
    limits = SandboxLimits(timeout_s=2.0, file_size_bytes=1 << 20, disk_bytes=3 << 20)
    with Sandbox(max_concurrency=1, limits=limits) as sandbox:
        res = sandbox.run_sync(code)
    assert res.ok and res.stdout == "True\nNo space left on device\n", res.stderr
    assert not any(Path(d, name).exists() for d in ("/tmp", "/var/tmp", "/dev/shm"))


UNPRIVILEGED_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from rlplat.sandbox import Sandbox, SandboxLimits, probe_isolation
iso = probe_isolation(sys.executable)
with Sandbox(max_concurrency=1, limits=SandboxLimits(timeout_s=1.5, max_processes=16)) as sb:
    bomb = sb.run_sync("import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n"
                       "        print('limit', flush=True)\\n        break")
    net = sb.run_sync("import socket\\nsocket.create_connection(('1.1.1.1', 80), timeout=1)")
print(json.dumps({"userns": iso.userns, "namespaces": iso.namespaces, "reasons": iso.reasons,
                  "bomb_limited": "limit" in bomb.stdout, "bomb_wall_s": bomb.wall_s,
                  "net_blocked": "Network is unreachable" in net.stderr}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root, setpriv and /usr/bin/python3 to act as an unprivileged caller")
def test_unprivileged_caller() -> None:
    """A caller without root: a user namespace where the kernel allows one, else rlimits counted per uid."""
    repo = str(Path(__file__).resolve().parents[3])
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-I",
                           "-c", UNPRIVILEGED_SCRIPT, repo], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    print(got, file=sys.stderr)
    assert got["bomb_limited"] and got["bomb_wall_s"] < 3.0
    assert got["net_blocked"] == got["namespaces"]
    if Path("/proc/sys/user/max_user_namespaces").read_text().strip() != "0":
        assert got["userns"], got["reasons"]


def test_pool_bounds_concurrency() -> None:
    code = "import time\nt = time.time()\ntime.sleep(0.25)\nprint(t, time.time())"
    with Sandbox(max_concurrency=2, limits=FAST) as sandbox:
        results = [f.result() for f in [sandbox.submit(code) for _ in range(5)]]
    spans = [tuple(map(float, r.stdout.split())) for r in results]
    most_at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert most_at_once <= 2


def test_async_run(sb: Sandbox) -> None:
    async def main() -> list[SandboxResult]:
        return await asyncio.gather(*(sb.run(f"print({i} * 2)") for i in range(3)))

    assert [r.stdout for r in asyncio.run(main())] == ["0\n", "2\n", "4\n"]


def test_bad_limits_and_options() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        Sandbox(max_concurrency=0)
    with pytest.raises(ValueError, match="absolute path to an existing directory"):
        Sandbox(hidden_paths=["relative/dir"])
    with pytest.raises(ValueError, match="holds the sandbox's work dirs"):
        Sandbox(hidden_paths=[tempfile.gettempdir()])


def test_isolation_is_reported() -> None:
    report = isolation_report(ISO)
    assert "namespaces" in report and "uid_drop" in report
    print(report, file=sys.stderr)
