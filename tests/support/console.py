"""What the libraries print, as seen on a run's console (captured from `make demo` before it was quiet)."""

import re
from pathlib import Path

ENGINE_LINE = re.compile(r"(INFO|WARNING) \d\d-\d\d \d\d:\d\d:\d\d \[\w+\.py:\d+\]")
"""A vLLM log record: `WARNING 12-03 14:46:51 [vllm.py:1703] Enforce eager set, ...`."""
NOISE = [
    ENGINE_LINE,
    re.compile(r"\((\w+ )?pid=\d+\)"),  # a Ray worker's output: `(Actor pid=22400) ...`, `(pid=22833) ...`
    re.compile(r"\[(INFO|WARNING)\] \[\w+\.py:\d+:"),  # DeepSpeed: `[WARNING] [real_accelerator.py:213:...`
    re.compile(r"\t(INFO|WARNING) \w+\.py:\d+ -- "),  # Ray: `... INFO worker.py:2038 -- Started a local Ray instance.`
    re.compile(r"\[W\d{4} |^W\d{4} "),  # torch's C++ and Python warnings: `[W1203 14:46:52.200860221 utils.cpp:68]`
    re.compile(r"NUMA binding|LD_PRELOAD|Triton|Loading weights|Writing model shards|Generating \w+ split"),
]
"""What, without --verbose, goes to the run's logs/ and not to the console."""


def noise(console: str) -> list[str]:
    """The console's lines that the libraries printed."""
    return [line for line in console.splitlines() if any(pattern.search(line) for pattern in NOISE)]


def check_quiet_console(console: str, run: Path) -> None:
    """No library's lines on the console; its summary names the run's logs folder, which has the
    driver's log and one per role, the actor's with vLLM's lines."""
    assert not noise(console), console
    logs = run / "logs"
    named = f"logs (vLLM, Ray, DeepSpeed, torch): {logs}/ "
    (line,) = [line for line in console.splitlines() if line.startswith(named)] or [console]
    assert {"actor0.log", "driver.log", "learner0.log"} <= set(line[len(named) :].split()), console
    assert ENGINE_LINE.search((logs / "actor0.log").read_text())
