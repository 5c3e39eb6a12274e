"""Actors whose vLLM engine mishandles weights after they arrive, inside its own load path: the four
failures the weight digest is for (tests/test_weight_digest.py). Importable by Ray workers."""

import torch

from oat_cpgd.actors import Actor


def change_loads(worker, change) -> None:
    """Run by the vLLM worker (collective_rpc): from now on its model loads `change(name, tensor)` (a list
    of (name, tensor) pairs) for each weight it receives. Every weight-transfer backend loads through
    `model.load_weights` (vllm/distributed/weight_transfer/, oat_cpgd.weight_sync)."""
    model = worker.model_runner.get_model()
    load = model.load_weights
    model.load_weights = lambda weights: load([pair for name, tensor in weights for pair in change(name, tensor)])


class FaultyLoadActor(Actor):
    """The real actor; its engine passes every weight of a sync through `change` before loading it."""

    @staticmethod
    def change(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        raise NotImplementedError

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.llm.collective_rpc(change_loads, args=(self.change,))


class SkippingActor(FaultyLoadActor):
    """(1) A skipped tensor: the load silently drops layer 1's down_proj. vLLM's layerwise reload then
    puts the layer's old weights back (with a log line only)."""

    SKIPPED = "model.layers.1.mlp.down_proj.weight"

    @staticmethod
    def change(name, tensor):
        return [] if name == SkippingActor.SKIPPED else [(name, tensor)]


class MisMergedActor(FaultyLoadActor):
    """(3) A LoRA merge mismatch: layer 0's o_proj ends as W + a small rank-1 delta, as when an adapter is
    merged at the wrong scale (1e-3 per element, about 1e-2 of the weight's norm on the tiny model)."""

    MERGED = "model.layers.0.self_attn.o_proj.weight"

    @staticmethod
    def change(name, tensor):
        if name != MisMergedActor.MERGED:
            return [(name, tensor)]
        generator = torch.Generator().manual_seed(0)
        b, a = (torch.randn(size, generator=generator, dtype=tensor.dtype) for size in tensor.shape)
        return [(name, tensor + 1e-3 * torch.outer(b, a))]


class PermutedActor(FaultyLoadActor):
    """(4) A permuted shard: layer 0's k_proj and v_proj weights are loaded into each other's block of
    the fused qkv_proj (as a loader with its shard ids swapped would)."""

    SWAPPED = {"model.layers.0.self_attn.k_proj.weight": "model.layers.0.self_attn.v_proj.weight"}
    SWAPPED.update({v: k for k, v in SWAPPED.items()})

    @staticmethod
    def change(name, tensor):
        return [(PermutedActor.SWAPPED.get(name, name), tensor)]


class StaleAfterSleepActor(Actor):
    """(2) Stale weights after sleep: whenever it wakes its KV cache (after the sync, in the collocated
    order of oat_cpgd.interface) the engine reloads its pretrained weights over the update, as one that
    restores the weights it held before the first sync would. (On CPU vLLM's sleep mode does nothing.)"""

    def wake_up(self, tags=None) -> None:
        super().wake_up(tags)
        if tags is None or "kv_cache" in tags:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self.args.pretrain})
            self.llm.reset_prefix_cache()
