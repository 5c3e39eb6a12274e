"""Oracles by name: the built-in ones, those registered by users, and `module:Class`; the same machinery
(`class_by_name`, `importable_class_name`) names environments (oat_cpgd.environments.registry)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
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
    return class_by_name(name, ORACLES, RewardOracle, "oracle")


def class_by_name(name: str, registry: dict[str, type], base: type, kind: str) -> type:
    """The subclass of `base` that `name` names in `registry` or as `some.module:ClassName`; errors say `kind`."""
    if name in registry:
        return registry[name]
    if ":" not in name:
        raise ValueError(f"Unknown {kind} {name!r}: use one of {sorted(registry)} or 'some.module:ClassName'")
    module_name, _, class_name = name.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{name} is not a subclass of {base.__name__}")
    return cls


BUILT_IN_PACKAGE = "oat_cpgd.oracles."
"""Names registered by classes of this package resolve alike in every process that imports it."""


def main_module_name() -> str | None:
    """The importable name of the `__main__` module (`python -m pkg.mod` or a script under the cwd), if any:
    how the Ray workers, which import from the launch directory, name what a script registered (oracles
    here, and oat_cpgd.algorithms.registry's algorithms)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return spec.name
    path = getattr(main, "__file__", None)
    if not path:
        return None
    # Ray workers import from the launch directory (oat_cpgd.cluster.worker_env): a script below it imports.
    try:
        relative = Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return None
    if relative.suffix != ".py":
        return None
    parts = relative.with_suffix("").parts
    return ".".join(parts) if all(part.isidentifier() for part in parts) else None


def importable_oracle_name(name: str) -> str:
    """A name for `oracle_class` that resolves to the same class in other processes (Ray workers).

    The registry lives per process: a name registered with `register_oracle` in the launching
    process is unknown to a worker that never imported the registering module. Built-in names
    (registered by this package, which every worker imports) are kept; other registered names
    become their class's `module:Class` import path. `module:Class` names are kept. Raises
    ValueError (unknown name, or a class no other process can import), TypeError (not a
    RewardOracle) or ImportError/AttributeError (`module:Class` that does not import).
    """
    return importable_class_name(name, ORACLES, RewardOracle, "oracle", BUILT_IN_PACKAGE)


def importable_class_name(name: str, registry: dict[str, type], base: type, kind: str, built_in: str) -> str:
    """`importable_oracle_name` for any registry of subclasses of `base` whose own classes live under `built_in`."""
    cls = class_by_name(name, registry, base, kind)
    if name not in registry or cls.__module__.startswith(built_in):
        return name
    module_name = main_module_name() if cls.__module__ == "__main__" else cls.__module__
    if module_name is None or "." in cls.__qualname__ or "<" in cls.__qualname__:
        raise ValueError(
            f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__}) is registered in this process only and other "
            "processes cannot import its class: define it at the top level of an importable module"
        )
    if cls.__module__ != "__main__":  # a script's module is not imported again here (its top level would rerun)
        module = importlib.import_module(module_name)
        if getattr(module, cls.__qualname__, None) is not cls:
            raise ValueError(f"{kind} {name!r}: {module_name}:{cls.__qualname__} does not name its class")
    return f"{module_name}:{cls.__qualname__}"


def get_oracle(name: str, **options: Any) -> RewardOracle:
    """A new oracle of the named class, built with `options` (e.g. timeout_s, num_workers)."""
    return oracle_class(name)(**options)


def oracle_from_flags(flags: Any, *, num_workers: int) -> RewardOracle:
    """The run's oracle as --oracle, --oracle_timeout and --format_reward describe it, with `num_workers`
    worker processes (0: checks run inline, as the driver's own checks do)."""
    options: dict[str, Any] = {"timeout_s": flags.oracle_timeout, "num_workers": num_workers}
    if flags.format_reward is not None:
        options["format_reward"] = flags.format_reward
    return get_oracle(flags.oracle, **options)
