"""Sending weights to an in-process actor the way learner rank 0 does (gloo broadcast), for the tests."""

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

from oat_cpgd.weight_sync import weight_sender


class StateWeights(WeightSource):
    """A saved state dict (name -> tensor) as a weight source."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self.state.items()]

    def __iter__(self):
        return iter(self.state.items())


def broadcast_to(actor, source: WeightSource) -> None:
    """One weight sync into `actor` (an in-process Actor, itself the client) from this process as rank 0."""
    sender = weight_sender("gloo", rank=0, num_workers=actor.weight_workers(), client=actor, source=source)
    try:
        sender.send_weights()
    finally:
        sender.shutdown()
