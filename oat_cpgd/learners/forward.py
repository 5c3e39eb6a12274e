"""The learner's forward passes: what a model gives at each response token.

A causal language model's output layer turns each position's final hidden state into a row of
vocabulary logits. At a 152k vocabulary, an 8k-token response's logits take 5 GB in fp32, and a
log-softmax's backward needs them again. So where a model's logits are just its output layer on
the final hidden states (`CausalLM.separable_head`, tried once per model), `read_response_tokens`
takes those hidden states at the response tokens only and runs the output layer on
--logprob_chunk_tokens of them at a time. With gradient each chunk is checkpointed: backward
recomputes its logits, so one chunk's exist at a time, not the whole response's. A model whose
logits are transformed after the output layer (a soft cap, a scale) computes its logits for the
whole response span itself, as it would anyway; only the log-softmax and what follows go in chunks.

Per-token tensors are aligned with the labels `input_ids[:, 1:]` (see `oat_cpgd.learners.batch`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from deepspeed import DeepSpeedEngine
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from oat_cpgd.learners.batch import Batch, Reduce, this_rank

Model = torch.nn.Module
"""A DeepSpeed engine or a plain Hugging Face model: both take (input_ids, attention_mask)."""

TokenRead = Callable[[Tensor, Tensor], Tensor]
"""(logits [M, V] in fp32, divided by the temperature; labels [M]) -> [M, ...] per-token values."""


def unwrapped(model: Model) -> PreTrainedModel:
    return model.module if isinstance(model, DeepSpeedEngine) else model


def takes_logits_to_keep(model: PreTrainedModel) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def has_dropout(model: PreTrainedModel) -> bool:
    """Dropout layers with p > 0, or attention dropout in the config (applied functionally)."""
    layers = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    return layers or bool(getattr(model.config, "attention_dropout", 0.0))


def label_outputs(model: Model, batch: Batch) -> Tensor:
    """The model's outputs at the label positions, [N, T - 1, ...]: the critic's values."""
    output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return output.logits[:, :-1]


@contextmanager
def _output_layer_input(model: Model, replace: Callable[[Tensor], Tensor]) -> Iterator[list[Tensor]]:
    """While open, the output layer's input (the final hidden states) is recorded in the list yielded,
    and the layer gets `replace(input)` instead."""
    seen: list[Tensor] = []

    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        seen.append(args[0])
        return (replace(args[0]), *args[1:])

    handle = unwrapped(model).get_output_embeddings().register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@dataclass
class CausalLM:
    """A causal language model (a DeepSpeed engine or a plain module) as the learner reads it."""

    model: Model
    keeps_logits: bool
    """Takes transformers' `logits_to_keep`: the model's final layers run at the response span only."""
    separable_head: bool
    """Its logits are its output layer applied to the final hidden states, nothing after."""

    @classmethod
    def of(cls, model: Model, device: torch.device) -> CausalLM:
        """A collective under ZeRO-3 (it runs the model on a few tokens)."""
        return cls(model, takes_logits_to_keep(unwrapped(model)), logits_are_the_output_layer(model, device))

    @property
    def head(self) -> Callable[[Tensor], Tensor]:
        """What turns `response_features` into logits."""
        return unwrapped(self.model).get_output_embeddings() if self.separable_head else _identity

    def response_features(self, batch: Batch) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """At the M response tokens of `batch`: the final hidden states [M, H] (or with an inseparable
        head the logits [M, V]), their labels [M], and their (row, label position) indices."""
        span = batch.response_span()
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
        if self.keeps_logits:  # label position t is logit position t
            inputs["logits_to_keep"] = torch.arange(span.start, span.stop, device=batch.input_ids.device)
        if self.separable_head:
            # The output layer gets no positions: its logits are computed later, in chunks.
            with _output_layer_input(self.model, lambda hidden: hidden[..., :0, :]) as seen:
                self.model(**inputs)
            features = seen[0]
        else:
            features = self.model(**inputs).logits
        if not self.keeps_logits:  # computed at every position
            features = features[:, span]
        rows, columns = batch.response_mask[:, span].bool().nonzero(as_tuple=True)
        return features[rows, columns], batch.labels[:, span][rows, columns], (rows, columns + span.start)


def _identity(tensor: Tensor) -> Tensor:
    return tensor


@torch.no_grad()
def logits_are_the_output_layer(model: Model, device: torch.device) -> bool:
    """Whether the model's logits are its output layer's outputs, untransformed. Tried with the final
    hidden states scaled up, so that logits of several hundred would show a soft cap or a scale."""
    module = unwrapped(model)
    if module.get_output_embeddings() is None:
        return False
    was_training = module.training
    module.eval()
    ids = torch.tensor([[1, 2, 3, 4]], device=device)
    try:
        with _output_layer_input(model, lambda hidden: hidden * 1000) as seen:
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        if len(seen) != 1:  # the output layer is not simply run once on the final hidden states
            return False
        direct = module.get_output_embeddings()(seen[0] * 1000)
    finally:
        module.train(was_training)
    return logits.shape == direct.shape and torch.allclose(logits.float(), direct.float(), rtol=1e-2, atol=1e-2)


def read_response_tokens(
    lm: CausalLM,
    batch: Batch,
    read: TokenRead,
    *,
    temperature: float,
    chunk_tokens: int,
    reduce_max: Reduce = this_rank,
) -> Tensor:
    """`read` at every response token of `batch`, at its label position: [N, T - 1, ...], 0 elsewhere.

    The logits `read` gets are those of the distribution the actor samples: divided by the
    temperature, in fp32, `chunk_tokens` tokens at a time (0: all at once). With gradient and more
    than one chunk, each chunk's logits are recomputed in backward instead of kept. Every rank runs
    as many chunks as the one with the most (`reduce_max` over ranks; the others run empty ones),
    whatever the ZeRO stage: under ZeRO-3 each run of the output layer gathers its weights from all
    ranks, and with equal counts every rank's backward also has the same shape.
    """
    features, labels, (rows, columns) = lm.response_features(batch)
    head = lm.head

    def read_chunk(chunk_features: Tensor, chunk_labels: Tensor) -> Tensor:
        return read(head(chunk_features).float() / temperature, chunk_labels)

    size = chunk_tokens if chunk_tokens > 0 else max(len(labels), 1)
    chunks = list(zip(features.split(size), labels.split(size), strict=True))  # at least one, maybe empty
    count = int(reduce_max(torch.tensor(len(chunks), device=labels.device)))
    chunks += [(features[:0], labels[:0])] * (count - len(chunks))
    recompute = torch.is_grad_enabled() and count > 1
    values = torch.cat(
        [checkpoint(read_chunk, *chunk, use_reentrant=False) if recompute else read_chunk(*chunk) for chunk in chunks]
    )
    out = values.new_zeros((*batch.response_mask.shape, *values.shape[1:]))
    return out.index_put((rows, columns), values)
