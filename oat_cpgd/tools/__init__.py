"""Tools that a model calls during a multi-turn rollout."""

from oat_cpgd.tools.sandbox import MAX_PROCESSES, SandboxResult, SandboxUnavailable, check_sandbox, run_python

__all__ = ["MAX_PROCESSES", "SandboxResult", "SandboxUnavailable", "check_sandbox", "run_python"]
