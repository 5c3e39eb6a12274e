"""Multi-turn environments (--env): subclass `Environment`; a reward oracle is the one-step case."""

from oat_cpgd.environments.base import Environment, OracleEnvironment, Step, call_environments
from oat_cpgd.environments.python_tool import PythonTool
from oat_cpgd.environments.registry import (
    ENVIRONMENTS,
    environment_class,
    environment_from_flags,
    importable_environment_name,
    register_environment,
)

__all__ = [
    "ENVIRONMENTS",
    "Environment",
    "OracleEnvironment",
    "PythonTool",
    "Step",
    "call_environments",
    "environment_class",
    "environment_from_flags",
    "importable_environment_name",
    "register_environment",
]
