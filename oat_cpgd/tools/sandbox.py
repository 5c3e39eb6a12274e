"""Run model-written Python in a throwaway Linux sandbox: the code is hostile input.

Every call starts a fresh `unshare` with new network, mount, PID and IPC namespaces; inside it a
small sh script builds a new root and then execs the code's chain of well-known tools:

    unshare --net --mount --pid --ipc --fork --kill-child    the namespaces; unshare's child is pid 1
      sh -c _SETUP                                          new root: read-only binds, a scratch tmpfs
        setpriv --reuid=UID ... --no-new-privs              an unused uid, no capabilities
          prlimit --as --cpu --fsize --nproc --core         the rlimits
            timeout -s KILL                                 pid 1 of the namespace, a wall-clock backstop
              python -I -S /proc/self/fd/N                  the code (standard library only)

What enforces each property (the kernel, never checks in Python):
- no network: a new network namespace has only a loopback interface, and it is down;
- no writes outside the scratch directory: the new root is a read-only tmpfs holding read-only binds
  of /usr (and /bin, /lib...), the interpreter's install and four /dev nodes; the only writable
  place is /tmp (also the working directory), a tmpfs of memory_mb that the kernel frees when the
  call's mount namespace ends, so nothing is ever written to the host's disk;
- no reading the host's files: pivot_root and a lazy unmount leave the host's root unreachable; the
  project, /root, /home, /etc are simply not in the new root;
- limits: RLIMIT_AS (memory_mb), RLIMIT_CPU, RLIMIT_FSIZE (memory_mb), RLIMIT_NPROC, no core dumps;
- nothing outlives the call: when the namespace's pid 1 exits, the kernel kills every process in
  it, setsid or not; the host ends a timed-out call by killing that pid 1, and unshare exits only
  after the kernel has reaped them all.

The code runs as a random uid that no account uses, not as root: the kernel does not apply
RLIMIT_NPROC to root, and a uid of its own also keeps a call from signalling any process outside it
(even another call's) and from writing anything that a bind mount might expose. Setting that up
(mounts, namespaces, changing uid) needs root, so the sandbox runs only as root; `check_sandbox`
refuses to start, naming the property, on a machine that cannot enforce one.
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# At most this many processes and threads per call (RLIMIT_NPROC, counted per uid, and each call
# has its own uid); the namespace's pid 1, `timeout`, is one of them.
MAX_PROCESSES = 32

_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# The code's whole environment: the host's variables (tokens, paths) stay out.
_ENV = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": "/tmp"}
_TOOLS = ("unshare", "sh", "mount", "umount", "pivot_root", "setpriv", "prlimit", "timeout")
_DEVICES = ("null", "zero", "random", "urandom")
# Read-only in the new root, at the same paths, when the host has them (on a merged-/usr system
# /bin, /lib... are symlinks into /usr; binding them works either way).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64")

# Runs as root inside the new namespaces; $1 is the fstab of the new root, the rest is the command to
# exec. The mount namespace is private, so the host sees none of these mounts; /tmp is only where
# the new root is built. The code's stderr is a pipe of its own, so that this script's and unshare's
# messages (on fd 2) stay apart from the code's; it arrives as stdin, fd 0, since dash redirects only
# fds 0-9, and the code gets /dev/null as stdin instead.
_SETUP = f"""set -eu
mount -t tmpfs -o size=1m,mode=755,nosuid,nodev sandbox-root /tmp
cd /tmp
mkdir oldroot dev
touch {" ".join(f"dev/{name}" for name in _DEVICES)}
printf '%s' "$1" > .fstab
# One mount process for every bind and filesystem: each process started here is start-up time.
mount --all --fstab .fstab
pivot_root . oldroot
umount --lazy /oldroot
mount -o remount,bind,ro /
cd /tmp
shift
exec "$@" 2>&0 </dev/null
"""


class SandboxUnavailable(RuntimeError):
    """This machine cannot enforce one of the sandbox's properties; the message names it."""


@dataclass(frozen=True)
class SandboxResult:
    stdout: str
    stderr: str
    # The code's exit status; 128 + N when a signal N killed it (as a shell reports it).
    exit_code: int
    # The wall-clock timeout ended the call (every process of the call was killed).
    timed_out: bool


def run_python(code: str, *, timeout_s: float, memory_mb: int, max_output_bytes: int) -> SandboxResult:
    """Run `code` with the standard library in a fresh sandbox; see the module docstring.

    timeout_s bounds the wall-clock time of the call, sandbox start-up (~30 ms) included; the CPU
    limit is one second above it, so a busy loop ends as a timeout. memory_mb bounds each process's
    address space, the size of any file it writes and the scratch directory. stdout and stderr are
    each cut at max_output_bytes; at the cut the host closes that pipe, so further writes fail
    (EPIPE) and a program printing forever ends at once.
    """
    check_sandbox()
    return _run(code, timeout_s, memory_mb, max_output_bytes)


@functools.cache  # once per process when it succeeds; a refusal is raised again on every call
def check_sandbox() -> None:
    """Raise SandboxUnavailable naming the property this machine cannot enforce."""
    if sys.platform != "linux" or os.geteuid() != 0:
        raise SandboxUnavailable(
            "the sandbox needs root on Linux: it makes namespaces, mounts its root and runs the code "
            "as a uid of its own (the kernel does not apply the process limit to root)"
        )
    missing = [tool for tool in _TOOLS if shutil.which(tool, path=_PATH) is None]
    if missing:
        raise SandboxUnavailable(f"the sandbox needs util-linux and coreutils; missing: {', '.join(missing)}")
    for flags, prop in [
        (["--net"], "no network (a network namespace)"),
        (["--mount"], "no writes or reads of the host's files (a mount namespace)"),
        (["--pid", "--fork"], "no process outlives the call (a PID namespace)"),
        (["--ipc"], "no shared memory with the host (an IPC namespace)"),
    ]:
        probe = subprocess.run(["unshare", *flags, "true"], env=_ENV, capture_output=True, text=True)
        if probe.returncode != 0:
            raise SandboxUnavailable(f"cannot enforce {prop}: {probe.stderr.strip()}")
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        raise SandboxUnavailable("cannot kill a timed-out call: /proc/PID/task/TID/children is missing")
    # The whole sandbox once, with code that reports what it can see or do that it should not.
    result = _run(_PROBE.format(project=str(Path(__file__).resolve().parent)), 10, 64, 10_000)
    if result.exit_code != 0 or result.stdout:
        raise SandboxUnavailable(f"cannot enforce: {result.stdout.strip()} {result.stderr.strip()}".strip())


_PROBE = f"""import os, resource, socket
if [name for _, name in socket.if_nameindex()] != ["lo"]:
    print("no network: the code sees network interfaces")
for path in ("/", "/usr"):
    try:
        open(os.path.join(path, "probe"), "w")
        print("read-only filesystem:", path, "is writable")
    except OSError:
        pass
if os.path.exists({{project!r}}):
    print("hidden host files: the project's directory is visible")
if os.getppid() != 1:
    print("no process outlives the call: the code is not in a PID namespace")
if os.getuid() == 0 or "CapEff:\\t0000000000000000" not in open("/proc/self/status").read():
    print("no privileges: the code runs as root or with capabilities")
if resource.getrlimit(resource.RLIMIT_NPROC)[0] != {MAX_PROCESSES}:
    print("process limit: RLIMIT_NPROC is not set")
"""


def _run(code: str, timeout_s: float, memory_mb: int, max_output_bytes: int) -> SandboxResult:
    python = os.path.realpath(sys._base_executable)  # the venv's interpreter resolves to this one
    # The interpreter's install (pyenv, conda...) joins the system directories when outside them.
    binds = [p for p in _SYSTEM_DIRS if os.path.exists(p)]
    prefix = os.path.realpath(sys.base_prefix)
    if not any(prefix == p or prefix.startswith(p + "/") for p in binds):
        binds.append(prefix)
    fstab = "".join(f"{_escape(p)} /tmp{_escape(p)} none bind,ro,nosuid,nodev,X-mount.mkdir 0 0\n" for p in binds)
    fstab += "".join(f"/dev/{name} /tmp/dev/{name} none bind 0 0\n" for name in _DEVICES)
    fstab += "proc /tmp/proc proc nosuid,nodev,noexec,X-mount.mkdir 0 0\n"
    fstab += f"scratch /tmp/tmp tmpfs size={memory_mb}m,mode=1777,nosuid,nodev,X-mount.mkdir 0 0\n"

    # Collisions between concurrent calls are about one in a billion; see the module docstring.
    uid = random.randrange(2**30, 2**31)
    memory = memory_mb * 2**20
    # The code reaches the sandbox as a memory file, not argv: no size limit, nothing on disk.
    code_fd = os.memfd_create("code.py")
    os.write(code_fd, code.encode())
    (stdout, stdout_w), (stderr, stderr_w), (setup_stderr, setup_stderr_w) = os.pipe(), os.pipe(), os.pipe()
    command = [
        "unshare", "--net", "--mount", "--propagation", "private", "--pid", "--ipc", "--fork",
        "--kill-child",  # if anything kills unshare, the namespace dies with it
        "sh", "-c", _SETUP, "sh", fstab,
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
        "--inh-caps=-all", "--bounding-set=-all",
        "prlimit", f"--as={memory}", f"--fsize={memory}", f"--cpu={math.ceil(timeout_s) + 1}",
        f"--nproc={MAX_PROCESSES}", "--core=0",
        "timeout", "--signal=KILL", str(timeout_s + 1),
        python, "-I", "-S", f"/proc/self/fd/{code_fd}",
    ]  # fmt: skip
    deadline = time.monotonic() + timeout_s
    try:
        proc = subprocess.Popen(
            command,
            stdin=stderr_w,  # see _SETUP
            stdout=stdout_w,
            stderr=setup_stderr_w,
            env=_ENV,
            pass_fds=(code_fd,),
            start_new_session=True,
        )
    finally:
        # Only the sandbox holds the write ends now: the pipes end when its last process does.
        for fd in (code_fd, stdout_w, stderr_w, setup_stderr_w):
            os.close(fd)
    limits = {stdout: max_output_bytes, stderr: max_output_bytes, setup_stderr: 65536}
    output, timed_out = _collect(proc, limits, deadline)
    if timed_out:
        status = 128 + signal.SIGKILL
    elif output[setup_stderr]:
        raise SandboxUnavailable(f"the sandbox did not start: {output[setup_stderr].decode(errors='replace')}")
    else:
        status = proc.returncode
    return SandboxResult(
        stdout=output[stdout].decode(errors="replace"),
        stderr=output[stderr].decode(errors="replace"),
        exit_code=status,
        timed_out=timed_out,
    )


def _collect(proc: subprocess.Popen, limits: dict[int, int], deadline: float) -> tuple[dict[int, bytes], bool]:
    """Read the pipes, each up to its limit in bytes, until the call ends or the deadline passes.

    Returns the bytes read from each pipe (closed here) and whether the call timed out.
    """
    output = {fd: bytearray() for fd in limits}
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for fd in limits:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            if not timed_out and time.monotonic() >= deadline:
                timed_out = True
                _kill_namespace(proc)
            # After the kill the pipes reach end-of-file at once: every writer is dead.
            for key, _ in selector.select(None if timed_out else deadline - time.monotonic()):
                chunk = os.read(key.fd, 65536)
                output[key.fd] += chunk[: limits[key.fd] - len(output[key.fd])]
                if not chunk or len(output[key.fd]) >= limits[key.fd]:
                    selector.unregister(key.fd)
                    os.close(key.fd)  # at the limit: the code's next write fails with EPIPE
    if not timed_out:
        # The pipes can close before the end: the code may close its stdout and stderr and run on.
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_namespace(proc)
    proc.wait()
    return {fd: bytes(data) for fd, data in output.items()}, timed_out


def _kill_namespace(proc: subprocess.Popen) -> None:
    """SIGKILL the call's PID namespace; once proc.wait() returns, none of its processes is left.

    unshare's only child is the namespace's pid 1. When it dies the kernel kills every other process
    in the namespace and reaps them before unshare can see pid 1 exit; so unshare exits last.
    """
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except FileNotFoundError:  # unshare has already exited
        return
    for pid in children:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:  # it exited meanwhile; unshare will follow
            pass
    if not children:
        # unshare has not forked yet (no namespace to clean up) or its child has just exited.
        proc.kill()


def _escape(path: str) -> str:
    """A path as fstab writes it: whitespace and backslashes as octal escapes."""
    return re.sub(r"[\s\\]", lambda m: f"\\{ord(m[0]):03o}", path)
