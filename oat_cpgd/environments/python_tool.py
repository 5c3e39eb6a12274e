"""`--env python`: maths with a Python interpreter as a tool.

The model may write code in a fenced block, closed by a fence on its own line:

    ```python
    print(347 * 29)
    ```

The closing fence and its newline ("\\n```\\n", a stop string of this environment) end the turn; the
code runs in the sandbox (oat_cpgd.tools.run_python: no network, no host files, limits) and its
output comes back as the observation, in an ```output block. A turn with no such block at its end is
the final answer, which --oracle scores (gsm8k, math, countdown, ...): its reward is the episode's.
Everything the model writes is hostile input; the sandbox is what makes running it safe.
"""

from __future__ import annotations

import re
import time
from typing import Any

from oat_cpgd.environments.base import Environment, Step
from oat_cpgd.environments.registry import register_environment
from oat_cpgd.oracles.base import RewardOracle
from oat_cpgd.tools import run_python

TOOL_CALL = re.compile(r"```python\n(.*)\n```\s*\Z", re.DOTALL)
"""A turn that ends with a python block: the code is what follows the turn's last opening fence."""
OUTPUT_LINES = 20
"""Output lines shown to the model (the last ones: an error's message is at the end)."""


def tool_call(action: str) -> str | None:
    """The code of the python block that ends `action`, or None (a final answer)."""
    start = action.rfind("```python\n")
    if start < 0:
        return None
    match = TOOL_CALL.match(action, start)
    return match.group(1) if match else None


def observation(stdout: str, stderr: str, timed_out: bool) -> str:
    """The tool's answer as the model sees it: its output (or error, or timeout) in an ```output block."""
    if timed_out:
        text = "TimeoutError: the code ran out of time"
    else:
        text = (stdout + stderr).strip()
    lines = text.splitlines()[-OUTPUT_LINES:]
    return "```output\n" + "\n".join(lines) + "\n```\n"


@register_environment("python")
class PythonTool(Environment):
    """Runs the model's python blocks; the oracle scores its final answer (reward 0 for a tool call)."""

    stop = ("\n```\n",)
    metrics = ("tool_calls", "tool_errors", "tool_timeouts", "sandbox_time")

    def __init__(
        self, oracle: RewardOracle, timeout_s: float = 1.0, memory_mb: int = 256, max_output_bytes: int = 2048
    ) -> None:
        super().__init__(oracle)
        self.timeout_s, self.memory_mb, self.max_output_bytes = timeout_s, memory_mb, max_output_bytes

    @classmethod
    def from_flags(cls, oracle: RewardOracle, flags: Any) -> PythonTool:
        return cls(oracle, timeout_s=flags.tool_timeout)

    def step(self, action: str) -> Step:
        code = tool_call(action)
        if code is None:
            reward, info = self.oracle.check(self.prompt, action, self.reference)
            return Step(None, reward, True, {"answer": info["answer"], "format_ok": info["format_ok"]})
        start = time.perf_counter()
        result = run_python(
            code, timeout_s=self.timeout_s, memory_mb=self.memory_mb, max_output_bytes=self.max_output_bytes
        )
        info = {
            "tool_calls": 1,
            "tool_errors": int(result.exit_code != 0 and not result.timed_out),
            "tool_timeouts": int(result.timed_out),
            "sandbox_time": time.perf_counter() - start,
        }
        return Step(observation(result.stdout, result.stderr, result.timed_out), 0.0, False, info)
