"""Oracles by name: the built-in ones, those registered by users, and `module:Class`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from oat_cpgd.oracles.base import RewardOracle

OracleClass = TypeVar("OracleClass", bound=type[RewardOracle])

ORACLES: dict[str, type[RewardOracle]] = {}
"""Registered oracle classes by name."""


def register_oracle(name: str) -> Callable[[OracleClass], OracleClass]:
    """Class decorator that makes `get_oracle(name)` build this oracle."""

    def register(cls: OracleClass) -> OracleClass:
        ORACLES[name] = cls
        return cls

    return register


def oracle_class(name: str) -> type[RewardOracle]:
    """The class named by a registered name or by `some.module:ClassName`."""
    if name in ORACLES:
        return ORACLES[name]
    if ":" not in name:
        raise ValueError(f"Unknown oracle {name!r}: use one of {sorted(ORACLES)} or 'some.module:ClassName'")
    module_name, _, class_name = name.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, RewardOracle)):
        raise TypeError(f"{name} is not a subclass of RewardOracle")
    return cls


def get_oracle(name: str, **options: Any) -> RewardOracle:
    """A new oracle of the named class, built with `options` (e.g. timeout_s, num_workers)."""
    return oracle_class(name)(**options)
