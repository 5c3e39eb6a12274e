"""The sandbox against hostile code: each test checks what the host sees afterwards.

Hostile payloads run through `_marked`, which re-executes them with a unique marker in their command
line, so the host can find every process of theirs in /proc, during and after the call.
"""

import os
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from oat_cpgd.tools import MAX_PROCESSES, check_sandbox, run_python

REPO = Path(__file__).resolve().parents[1]
LIMITS = {"timeout_s": 5.0, "memory_mb": 64, "max_output_bytes": 10_000}


@pytest.fixture(autouse=True)
def _sandbox_available():
    check_sandbox()  # a machine that cannot enforce a property fails here, saying which


def _marked(payload: str) -> tuple[str, str]:
    """Code that runs `payload` as a Python process with a unique marker in its argv, and the marker."""
    marker = f"sandbox-test-{uuid.uuid4().hex}"
    return f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {payload!r}, {marker!r}])", marker


def _host_pids(marker: str) -> list[int]:
    """The host's processes whose command line holds `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # it exited while we looked
            pass
    return pids


def _rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def _run_watched(marker: str, code: str, **limits):
    """Run the code while the host samples its marked processes: (result, most processes, most RSS in MB)."""
    most_processes, most_rss = 0, 0.0
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_python, code, **{**LIMITS, **limits})
        while not future.done():
            pids = _host_pids(marker)
            most_processes = max(most_processes, len(pids))
            most_rss = max([most_rss, *map(_rss_mb, pids)])
            time.sleep(0.01)
    return future.result(), most_processes, most_rss


def test_prints_and_exit_codes():
    result = run_python("print('hello')\nprint(6 * 7)", **LIMITS)
    assert (result.stdout, result.stderr, result.exit_code, result.timed_out) == ("hello\n42\n", "", 0, False)
    assert run_python("import sys; sys.exit(3)", **LIMITS).exit_code == 3


def test_an_exception_gives_its_traceback_and_exit_code_1():
    result = run_python("def f():\n    raise ValueError('boom')\nf()", **LIMITS)
    assert result.exit_code == 1 and not result.timed_out
    assert "Traceback" in result.stderr and result.stderr.endswith("ValueError: boom\n")
    assert result.stdout == ""


def test_the_scratch_dir_is_writable_private_and_gone_afterwards():
    name = f"scratch-{uuid.uuid4().hex}"
    code = f"import os\nopen({name!r}, 'w').write('x' * 1000)\nprint(os.getcwd(), os.listdir('.'))"
    assert run_python(code, **LIMITS).stdout == f"/tmp ['{name}']\n"
    # The next call starts with an empty scratch dir, and the host never had the file.
    assert run_python("import os; print(os.listdir('.'))", **LIMITS).stdout == "[]\n"
    assert not (Path("/tmp") / name).exists()


def test_concurrent_calls_are_independent_even_beside_a_fork_bomb():
    bomb, marker = _marked("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    calm = "import os, time\nopen('mine-{0}', 'w').close()\ntime.sleep(0.5)\nprint(sorted(os.listdir('.')))"
    with ThreadPoolExecutor(3) as pool:
        bombed = pool.submit(run_python, bomb, **{**LIMITS, "timeout_s": 2.0})
        calls = [pool.submit(run_python, calm.format(i), **LIMITS) for i in range(2)]
        results = [call.result() for call in calls]
        assert bombed.result().timed_out
    for i, result in enumerate(results):
        assert (result.stdout, result.exit_code) == (f"['mine-{i}']\n", 0), result.stderr
    assert _host_pids(marker) == []


def test_fork_bomb_is_capped_and_leaves_nothing():
    code, marker = _marked("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    result, most_processes, _ = _run_watched(marker, code, timeout_s=2.0)
    assert result.timed_out and result.exit_code == 137
    assert 1 < most_processes <= MAX_PROCESSES
    assert _host_pids(marker) == []


def test_no_connection_reaches_a_port_the_host_listens_on():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            f"for host in ('127.0.0.1', 'localhost', '1.1.1.1'):\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=1)\n"
            "        print('connected', host)\n"
            "    except OSError as e:\n"
            "        print('refused', host, e)\n"
        )
        result = run_python(code, **LIMITS)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing is waiting to be accepted
            server.accept()
    assert "connected" not in result.stdout and result.stdout.count("refused") == 3


def test_writes_outside_the_scratch_dir_do_not_reach_the_host(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    victim.chmod(0o666)  # writable by anyone: only the sandbox's own walls keep it safe
    new_files = [tmp_path / "new.txt", REPO / f"escape-{uuid.uuid4().hex}", Path(f"/usr/lib/escape-{uuid.uuid4().hex}")]
    code = (
        "import os\n"
        f"for path in {[str(victim), *map(str, new_files)]!r}:\n"
        "    try:\n"
        "        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "        open(path, 'w').write('pwned')\n"
        "        print('wrote', path)\n"
        "    except OSError as e:\n"
        "        print('failed', path, e)\n"
    )
    result = run_python(code, **LIMITS)
    assert result.exit_code == 0, result.stderr
    assert victim.read_text() == "original"
    for path in new_files:
        assert not path.exists()


def test_an_infinite_loop_times_out_and_leaves_nothing():
    code, marker = _marked("while True:\n    pass")
    start = time.monotonic()
    result = run_python(code, **{**LIMITS, "timeout_s": 1.0})
    assert result.timed_out and result.exit_code == 137
    assert 1.0 <= time.monotonic() - start < 3.0
    assert _host_pids(marker) == []


def test_a_memory_bomb_gets_memory_error_and_never_holds_more_than_its_limit():
    code, marker = _marked("data = b'x' * (4 * 64 * 2**20)\nprint('allocated')")
    result, _, most_rss = _run_watched(marker, code, memory_mb=64)
    assert result.exit_code == 1 and result.stderr.endswith("MemoryError\n")
    assert "allocated" not in result.stdout
    assert most_rss < 64


def test_gigabytes_of_output_are_cut_at_the_limit_quickly():
    # Each stream until its pipe breaks: the host closes it at the limit.
    code = "import os\nfor fd in (2, 1):\n    try:\n        while True:\n            os.write(fd, b'x' * 2**16)\n    except BrokenPipeError:\n        pass"
    start = time.monotonic()
    result = run_python(code, **{**LIMITS, "timeout_s": 30.0})
    assert time.monotonic() - start < 5.0 and not result.timed_out
    assert result.stdout == "x" * LIMITS["max_output_bytes"] and result.stderr == result.stdout


def test_killing_its_parents_and_everyone_does_not_reach_the_host():
    bystander = subprocess.Popen(["sleep", "60"])  # a host process that an escape could kill
    try:
        code = "import os\nfor pid in (os.getppid(), -1, 0):\n    try:\n        os.kill(pid, 9)\n    except OSError:\n        pass"
        result = run_python(code, **LIMITS)
        # kill(0) ends the code's own process group, itself included; nothing outside it.
        assert result.exit_code == 128 + 9 and not result.timed_out
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_detached_daemon_dies_with_the_call():
    daemon = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.close(1); os.close(2)\n"  # no pipe keeps the call open: only the namespace can end it
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('detached')\n"
    )
    code, marker = _marked(daemon)
    start = time.monotonic()
    result = run_python(code, **LIMITS)
    assert (result.stdout, result.exit_code, result.timed_out) == ("detached\n", 0, False)
    assert time.monotonic() - start < LIMITS["timeout_s"]
    assert _host_pids(marker) == []


def test_the_projects_and_the_hosts_files_cannot_be_read():
    # A path and something that only its content (a file's text, a folder's entries) holds.
    secrets = {
        Path(__file__).resolve(): "def test_the_projects_and_the_hosts_files_cannot_be_read",
        REPO / "setup.py": "install_requires",
        REPO: "pytest.ini",
        Path("/etc/passwd"): "root:x:0:0",
    }
    assert all(text in (path.read_text() if path.is_file() else os.listdir(path)) for path, text in secrets.items())
    code = (
        "import os\n"
        f"for path in {list(map(str, secrets))!r}:\n"
        "    try:\n"
        "        print(open(path).read() if os.path.isfile(path) else os.listdir(path))\n"
        "    except OSError as e:\n"
        "        print('hidden', e)\n"
    )
    result = run_python(code, **LIMITS)
    assert result.stdout.count("hidden") == len(secrets)
    for text in secrets.values():
        assert text not in result.stdout
