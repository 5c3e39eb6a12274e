"""Environments by name (--env): the built-in ones, those registered by users, and `module:Class`,
resolved by the oracles' machinery (oat_cpgd.oracles.registry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from oat_cpgd.environments.base import Environment, OracleEnvironment
from oat_cpgd.oracles.registry import class_by_name, importable_class_name, oracle_from_flags

EnvironmentClass = TypeVar("EnvironmentClass", bound=type[Environment])

ENVIRONMENTS: dict[str, type[Environment]] = {"oracle": OracleEnvironment}
"""Registered environment classes by name."""

BUILT_IN_PACKAGE = "oat_cpgd.environments."


def register_environment(name: str) -> Callable[[EnvironmentClass], EnvironmentClass]:
    """Class decorator that makes `--env name` build this environment."""

    def register(cls: EnvironmentClass) -> EnvironmentClass:
        ENVIRONMENTS[name] = cls
        return cls

    return register


def environment_class(name: str) -> type[Environment]:
    """The class named by a registered name or by `some.module:ClassName`."""
    return class_by_name(name, ENVIRONMENTS, Environment, "environment")


def importable_environment_name(name: str) -> str:
    """A name for `environment_class` that resolves to the same class in the Ray workers (as
    oat_cpgd.oracles.registry.importable_oracle_name)."""
    return importable_class_name(name, ENVIRONMENTS, Environment, "environment", BUILT_IN_PACKAGE)


def environment_from_flags(flags: Any) -> Environment:
    """A fresh environment as --env describes it, holding the run's --oracle (checks inline)."""
    return environment_class(flags.env).from_flags(oracle_from_flags(flags, num_workers=0), flags)
