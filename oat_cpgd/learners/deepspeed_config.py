"""DeepSpeed configurations of the learner's engines, built from the flags."""

from __future__ import annotations

from typing import Any

import torch

from oat_cpgd.args import PPOArgs

NEVER = 2**31 - 1
"""`steps_per_print`: DeepSpeed's own throughput log would interleave with ours."""


def _offload(enabled: bool, on_cuda: bool) -> dict[str, Any]:
    # Pinned host memory speeds up device transfers; there is nothing to pin for on CPU.
    return {"device": "cpu" if enabled else "none", "pin_memory": on_cuda}


def train_config(args: PPOArgs, world_size: int, learning_rate: float, on_cuda: bool) -> dict[str, Any]:
    """A trained engine (policy or critic): ZeRO, AdamW, clipping, batch sizes; `on_cuda` from the placement.

    DeepSpeed checks train_batch_size = micro-batch x accumulation steps x ranks; that they divide
    was checked, naming the flags, before any role started (`oat_cpgd.placement.check_batch_split`).
    """
    micro_batch = args.train_batch_size_per_device
    return {
        "train_batch_size": args.train_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": args.train_batch_size // (micro_batch * world_size),
        "gradient_clipping": args.max_norm,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": learning_rate,
                "betas": [args.adam_beta_1, args.adam_beta_2],
                "eps": 1e-8,
                "weight_decay": args.l2,
                # torch's AdamW needs no compiled op (DeepSpeed's take ~80 s to build); only
                # optimizer states offloaded from a GPU are worth DeepSpeed's fast CPU Adam.
                "torch_adam": not (args.adam_offload and on_cuda),
            },
        },
        "zero_optimization": {
            "stage": args.zero_stage,
            "offload_optimizer": _offload(args.adam_offload, on_cuda),
            "offload_param": _offload(args.param_offload, on_cuda),
        },
        "bf16": {"enabled": args.bf16},
        # Accumulate bf16 gradients over micro-batches in fp32.
        "data_types": {"grad_accum_dtype": "fp32"},
        "steps_per_print": NEVER,
    }


def reference_config(args: PPOArgs, on_cuda: bool) -> dict[str, Any]:
    """A ZeRO-3 inference engine for the frozen reference model (no optimizer)."""
    return {
        "train_micro_batch_size_per_gpu": args.mini_train_batch_size_per_device,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "offload_param": _offload(args.ref_offload, on_cuda)},
        "bf16": {"enabled": args.bf16},
        "steps_per_print": NEVER,
    }


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices, none on biases and norm weights (as in OpenRLHF/oat)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if "bias" in name or "norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]
