"""Models built locally for tests and demos."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m oat_cpgd.models.tiny` does not import the module twice.
    if name == "build_tiny_model":
        from oat_cpgd.models.tiny import build_tiny_model

        return build_tiny_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["build_tiny_model"]
