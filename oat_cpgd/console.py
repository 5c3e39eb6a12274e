"""What a run shows on the console, and where everything else goes.

Without --verbose the console shows the progress bar, oat_cpgd's own warnings (WARNING and above
from the `oat_cpgd` loggers, a role's included), other libraries' errors, and a summary. The rest
goes to files in `<run folder>/logs/`:

- `driver.log`: this process's output while the run goes on (vLLM, DeepSpeed, Ray, torch and
  transformers log records, Python warnings, whatever C code prints, and the Ray processes it starts);
- `actor<i>.log`, `learner<rank>.log`: each role process's stdout and stderr, C-level output included
  (vLLM's engine core, its NUMA and tcmalloc notices, an oracle worker's), which Ray then does not
  forward to the console (`ray.init(log_to_driver=False)`).

With --verbose nothing is redirected: every library prints to the console as it would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

LOGS = "logs"
"""The folder of the log files, in the run folder."""
DRIVER_LOG = "driver.log"
ROLE_LOG_ENV = "OAT_CPGD_ROLE_LOG"
"""Set by the driver in a role's environment: the file its output goes to (unset with --verbose)."""
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OWN_WARNING = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (oat_cpgd[\w.]*): (.*)$")
"""A line of a role's log that holds one of oat_cpgd's warnings (written with FORMAT)."""
ACTOR_ID = re.compile(r"actor_id=([0-9a-f]+)")
"""How a RayTaskError's text names the actor that raised it."""
TAIL_LINES = 20
"""Lines of a failed role's log shown with the error."""


def run_folder(args) -> Path:
    """The folder a run writes to: --resume_dir, or --save_path/--wb_run_name."""
    return Path(args.resume_dir or Path(args.save_path) / args.wb_run_name)


def logs_dir(run_dir: Path) -> Path:
    return Path(run_dir).absolute() / LOGS


def logs_line(run_dir: Path, verbose: bool = False) -> str:
    """Where the run's logs are (vLLM's, Ray's, DeepSpeed's...): its logs folder and files."""
    if verbose:
        return "logs: printed on the console (--verbose)"
    logs = logs_dir(run_dir)
    files = " ".join(sorted(path.name for path in logs.glob("*.log")))
    return f"logs (vLLM, Ray, DeepSpeed, torch): {logs}/ {files}".rstrip()


# ---------------------------------------------------------------------------- role processes
ROLE_LOGS: dict[str, tuple[str, Path]] = {}
"""Ray actor id (hex) -> (role name, its log file), for the roles this driver started: an error names them."""


def role_env(args, role: str) -> dict[str, str]:
    """The environment variable that sends a role's output to `<run folder>/logs/<role>.log`; none
    with --verbose.

    The path is absolute, as the driver sees it. On a cluster whose nodes do not share that folder, a
    role on another node writes its log under the same path on its own node (the folders are made as
    needed): the run's logs are then spread over the nodes, each role's where it ran.
    """
    if args.verbose or not (args.resume_dir or args.wb_run_name):  # (no run folder: a role made for a test)
        return {}
    return {ROLE_LOG_ENV: str(logs_dir(run_folder(args)) / f"{role}.log")}


def register_role(handle, role: str, env: dict[str, str]) -> None:
    """Remember which role (and log file) a Ray actor handle is, for error messages."""
    if ROLE_LOG_ENV in env:
        ROLE_LOGS[handle._actor_id.hex()] = (role, Path(env[ROLE_LOG_ENV]))


def send_role_output_to_log() -> Path | None:
    """In a role's process (an actor, a learner rank), first thing: its stdout and stderr, as file
    descriptors, go to its log file, so that what C code and child processes (vLLM's engine core,
    the oracle's workers) print goes there too; its log records go there as FORMAT lines. Returns
    the file, or None when the driver asked for none (--verbose, or a role made outside a run)."""
    path = os.environ.get(ROLE_LOG_ENV)
    if not path:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    redirect_fds(path)
    root = logging.getLogger()
    if not any(getattr(handler, "oat_cpgd_role_log", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)  # fd 2: the log file
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.oat_cpgd_role_log = True
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        logging.captureWarnings(True)
    logging.getLogger(__name__).info("role output from pid %d on %s", os.getpid(), os.uname().nodename)
    return path


def redirect_fds(path: Path) -> None:
    """This process's file descriptors 1 and 2 to the end of `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of a log file (empty when it cannot be read)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 64 * 1024))
            return file.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def failed_roles(error: BaseException) -> list[tuple[str, Path]]:
    """The roles (name, log file) that an error, or an error it came from, names by their Ray actor id."""
    found, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        actor_id = getattr(error, "actor_id", None) or getattr(error, "_actor_id", None)
        if not isinstance(actor_id, str):  # a role's exception as ray.get raises it names it in its text
            named = ACTOR_ID.search(str(error))
            actor_id = named and named.group(1)
        role = ROLE_LOGS.get(actor_id)
        if role and role not in found:
            found.append(role)
        error = error.__cause__ or error.__context__
    return found


def explain(error: BaseException, logs: Path) -> None:
    """Add to `error` (shown under its traceback) which role failed, its log file and that file's last
    lines (unless they end with what the error already shows: a role's exception comes with its
    traceback); or, when no role is named, where the logs are."""
    roles = failed_roles(error)
    if not roles:
        error.add_note(logs_line(logs.parent))
        return
    for role, path in roles:
        lines = tail(path)
        note = f"{role} failed; its log: {path}"
        if lines and lines[-1].strip() not in str(error):
            note += f"\nits last {len(lines)} lines:\n" + "\n".join(f"  | {line}" for line in lines)
        error.add_note(note)


# ---------------------------------------------------------------------------- the driver
class OwnRecords(logging.Filter):
    """oat_cpgd's WARNING and above, and every library's ERROR and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "oat_cpgd" or record.name.startswith("oat_cpgd.")
        return record.levelno >= (logging.WARNING if own else logging.ERROR)


class ConsoleHandler(logging.Handler):
    """Writes records above the progress bar (tqdm.write), on the console stream."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.WARNING)
        self.stream = stream
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.addFilter(OwnRecords())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class Console:
    """The driver's console for one run (a context manager around it).

    `stream` is the console: the progress bar and what the user should read go there. Without
    --verbose, while the context is open, file descriptors 1 and 2 point at `<run folder>/logs/driver.log`
    (the stream is a copy of the former fd 2), log records go to that file at INFO, and oat_cpgd's
    warnings (and others' errors) to the stream as well. `poll` copies the warnings the roles wrote in
    their logs to the stream. An error leaving the context gets a note naming the failed role's log.
    """

    def __init__(self, run_dir: Path, verbose: bool) -> None:
        self.logs = logs_dir(run_dir)
        self.verbose = verbose
        self.stream: TextIO = sys.stderr
        self._offsets: dict[Path, int] = {}
        self._undo = contextlib.ExitStack()

    @property
    def driver_log(self) -> Path:
        return self.logs / DRIVER_LOG

    def __enter__(self) -> Console:
        if self.verbose:
            return self
        self.logs.mkdir(parents=True, exist_ok=True)
        # A resumed run's logs hold the earlier attempt's lines: poll shows what is written from now on.
        self._offsets = {path: path.stat().st_size for path in self.logs.glob("*.log")}
        with contextlib.ExitStack() as undo:
            self.stream = undo.enter_context(console_stream())
            undo.enter_context(output_to(self.driver_log))
            undo.enter_context(log_records(self.driver_log, ConsoleHandler(self.stream)))
            self._undo = undo.pop_all()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if not self.verbose:
            self.poll()  # the roles' last warnings
            if isinstance(error, Exception):  # (not an interrupt)
                explain(error, self.logs)
        self._undo.close()
        self.stream = sys.stderr

    def write(self, line: str) -> None:
        tqdm.write(line, file=self.stream)

    def poll(self) -> None:
        """Show the warnings the roles have written in their logs since the last poll (the logs this
        machine can read: all of them when the run folder is shared or the run on one machine)."""
        if self.verbose or not self.logs.is_dir():
            return
        for path in sorted(self.logs.glob("*.log")):
            if path.name == DRIVER_LOG:
                continue
            try:
                with open(path, "rb") as file:
                    file.seek(self._offsets.get(path, 0))
                    new = file.read()
            except OSError:
                continue
            complete = new[: new.rfind(b"\n") + 1]  # a line still being written waits for the next poll
            self._offsets[path] = self._offsets.get(path, 0) + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                match = OWN_WARNING.match(line)
                if match:
                    level, name, message = match.groups()
                    self.write(f"{level} {name} ({path.stem}): {message}")


@contextlib.contextmanager
def console_stream() -> Iterator[TextIO]:
    """A text stream on a copy of file descriptor 2, as it is now (the terminal)."""
    sys.stderr.flush()
    stream = open(os.dup(2), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None), errors="replace")
    try:
        yield stream
    finally:
        stream.close()


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """File descriptors 1 and 2 to the end of `path` while the context is open (what Python, C code and
    child processes started meanwhile print), then back to what they were."""
    saved = os.dup(1), os.dup(2)
    try:
        redirect_fds(path)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextlib.contextmanager
def log_records(path: Path, console: logging.Handler) -> Iterator[None]:
    """Every log record at INFO and above to `path`, and the console's to `console`; loggers with
    their own console handlers (vLLM's, DeepSpeed's, Ray's) write to fd 1 or 2, which `output_to`
    points at the file too. Python warnings become log records (to the file)."""
    root = logging.getLogger()
    file = logging.FileHandler(path)
    file.setFormatter(logging.Formatter(FORMAT))
    level = root.level
    root.addHandler(file)
    root.addHandler(console)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.setLevel(level)
        root.removeHandler(console)
        root.removeHandler(file)
        file.close()


@contextlib.contextmanager
def quiet(path: Path, verbose: bool = False) -> Iterator[None]:
    """What is printed in the context goes to the end of `path` (unless `verbose`)."""
    if verbose:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_to(path):
        yield
