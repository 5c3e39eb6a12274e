"""What the learner writes and reads back: DeepSpeed checkpoints (weights, optimizer, scheduler) and
the policy in Hugging Face format. Every function is a collective: all ranks call it together."""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from deepspeed import DeepSpeedEngine
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from oat_cpgd.learners.weights import ModelWeights

CHECKPOINT_TAG = "state"


def gathered_state(policy: DeepSpeedEngine, rank: int, zero3: bool) -> dict[str, Tensor] | None:
    """The policy's weights (with LoRA the merged model's) by Hugging Face name, as contiguous CPU
    tensors in the training dtype, on rank 0 (None elsewhere). Tied weights appear once, as in the checkpoint."""
    state = {}
    for name, tensor in ModelWeights(policy.module, zero3=zero3, tied_head=False):
        # Every rank iterates: under ZeRO-3 each layer's gather is a collective.
        if rank == 0:
            # copy=True: on CPU, .to("cpu") would alias the live (or gathered, soon freed) parameter.
            state[name] = tensor.to("cpu", copy=True).contiguous()
    return state if rank == 0 else None


def save_pretrained(
    policy: DeepSpeedEngine,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike,
    *,
    rank: int,
    zero3: bool,
    lora: bool,
) -> None:
    """Rank 0 writes config, safetensors weights and tokenizer (with LoRA the merged model, which loads without peft)."""
    state = gathered_state(policy, rank, zero3)
    if rank == 0:
        model = policy.module
        # A PeftModel would save only the adapter: the base model's class writes the merged weights.
        (model.get_base_model() if lora else model).save_pretrained(path, state_dict=state)
        tokenizer.save_pretrained(path)
    dist.barrier()


def save_engines(engines: dict[str, DeepSpeedEngine], path: str | os.PathLike, client_state: dict[str, Any]) -> None:
    """Each engine's DeepSpeed state under `path/deepspeed/NAME`, with `client_state` beside it."""
    for name, engine in engines.items():
        engine.save_checkpoint(os.path.join(path, "deepspeed", name), tag=CHECKPOINT_TAG, client_state=client_state)


def load_engines(engines: dict[str, DeepSpeedEngine], path: str | os.PathLike) -> dict[str, Any]:
    """Restore what `save_engines` wrote; returns its `client_state`."""
    for name, engine in engines.items():
        _, client_state = engine.load_checkpoint(
            os.path.join(path, "deepspeed", name),
            tag=CHECKPOINT_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
    return client_state
