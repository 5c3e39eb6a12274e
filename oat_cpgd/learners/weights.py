"""The policy's weights as the actors and the checkpoints receive them: by Hugging Face name, under
ZeRO-3 gathered one layer at a time, with LoRA merged into the base weights.

Imports neither vLLM nor Ray, so the learner runs (and saves) where they are not installed.
`ModelWeights` is what vLLM's weight-transfer engines call a `WeightSource`: they read its
`metadata()` and iterate it, which is all of that interface they use (oat_cpgd.weight_sync).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NamedWeight:
    """One weight as vLLM loads it: a parameter itself, or (LoRA) a base weight merged with its adapter."""

    params: tuple[torch.nn.Parameter, ...]
    """What it is computed from: gathered together under ZeRO-3; the first gives its shape and dtype."""
    compute: Callable[[], torch.Tensor]
    """Called while `params` are gathered."""


@dataclass(frozen=True)
class WeightMeta:
    """A weight's name, dtype and full shape: the fields of vLLM's `ParamMeta`, which its engines read."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


def named_weights(model: torch.nn.Module) -> dict[str, NamedWeight]:
    """A Hugging Face model's weights by name; a peft model's are those of its merged model."""
    if getattr(model, "peft_config", None):  # a PeftModel; peft is imported only for one
        from oat_cpgd.learners.lora import merged_weights

        return merged_weights(model)
    return {name: NamedWeight((param,), param.detach) for name, param in model.named_parameters()}


def layer_groups(names: list[str]) -> list[list[str]]:
    """`names` in gather groups, in order of first appearance: one group per decoder layer (the
    names that agree up to their first numeric part, `model.layers.3.`), one per other weight."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        layer = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        groups.setdefault(name if layer is None else ".".join(parts[: layer + 1]), []).append(name)
    return list(groups.values())


class ModelWeights:
    """A Hugging Face model's weights by name, as vLLM loads them; under ZeRO-3 gathered one layer at a time.

    Iterated on every learner rank in step (the gather is a collective). A tied output embedding
    is also sent as `lm_head.weight` (unless `tied_head` is False, as for a checkpoint, which
    stores it once): vLLM's CPU backend keeps a separately packed lm_head that only an explicit
    `lm_head.weight` refreshes (vLLM on CUDA ignores it).
    """

    def __init__(self, model: torch.nn.Module, zero3: bool = False, tied_head: bool = True) -> None:
        weights = named_weights(model)
        if tied_head and getattr(model.config.get_text_config(), "tie_word_embeddings", False):
            head = model.get_output_embeddings().weight
            weights.setdefault("lm_head.weight", NamedWeight((head,), head.detach))
        self.gather_groups = layer_groups(list(weights))
        # In the order of the gather groups, which iteration follows.
        self.weights = {name: weights[name] for group in self.gather_groups for name in group}
        self.zero3 = zero3

    def metadata(self) -> list[WeightMeta]:
        # ZeRO-3 leaves each rank a flat shard; ds_shape is the full shape.
        return [
            WeightMeta(name, w.params[0].dtype, tuple(getattr(w.params[0], "ds_shape", w.params[0].shape)))
            for name, w in self.weights.items()
        ]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for group in self.gather_groups:
            weights = [self.weights[name] for name in group]
            with self._gathered([param for weight in weights for param in weight.params]):
                for name, weight in zip(group, weights, strict=True):
                    yield name, weight.compute()

    def _gathered(self, params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager:
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params)
