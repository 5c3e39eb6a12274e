"""LoRA on the policy (--lora_rank > 0), through peft.

`add_lora` wraps the policy before DeepSpeed does and freezes the base model, so the optimizer
holds the adapter alone. Outside the learner only the merged model exists, W + B·A·alpha/r under
the base model's Hugging Face names (`merged_weights`): the weight sync (vLLM loads it as the
plain model it serves, with no LoRA support of its own), and the checkpoints' `policy/` and
`final_model/`. Checkpoints also keep the adapter in peft's format (`save_adapter`).
"""

from __future__ import annotations

import os
from functools import partial

import deepspeed
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer, LoraModel
from transformers import PreTrainedModel

from oat_cpgd.args import PPOArgs
from oat_cpgd.learners.weights import NamedWeight

ALL_LINEAR = "all-linear"
"""peft's name for every linear layer but the output layer: attention and MLP projections."""


def add_lora(model: PreTrainedModel, args: PPOArgs) -> PeftModel:
    """`model` with a fresh LoRA adapter (B = 0: at first it computes what `model` does); only the adapter trains."""
    target_modules = ALL_LINEAR if list(args.target_modules) == [ALL_LINEAR] else list(args.target_modules)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules,
    )
    return get_peft_model(model, config)


@torch.no_grad()
def _merged(base: torch.nn.Parameter, layer: LoraLayer, adapter: str) -> torch.Tensor:
    # peft's own delta (B·A·scaling, transposed where the layer stores it so); in the base weight's
    # dtype, which the sync declares, whatever dtype the adapter was kept in.
    return (base + layer.get_delta_weight(adapter)).to(base.dtype)


def merged_weights(model: PeftModel) -> dict[str, NamedWeight]:
    """The merged model's weights by the base model's Hugging Face names, each computed from the
    parameters it needs (under ZeRO-3 they are gathered together first)."""
    base_model = model.get_base_model()
    adapter = model.active_adapter
    lora_layers = {name: module for name, module in base_model.named_modules() if isinstance(module, LoraLayer)}
    weights = {}
    for name, param in base_model.named_parameters():
        if LoraModel.prefix in name:  # lora_A / lora_B: folded into their base weight below
            continue
        module_name, _, leaf = name.rpartition(".")
        owner = module_name.removesuffix(".base_layer")  # peft moves a wrapped layer's weights under base_layer
        layer = lora_layers.get(owner) if leaf == "weight" else None
        if layer is None:
            weights[f"{owner}.{leaf}"] = NamedWeight((param,), param.detach)
        else:
            parts = (param, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight)
            weights[f"{owner}.{leaf}"] = NamedWeight(parts, partial(_merged, param, layer, adapter))
    return weights


def save_adapter(model: PeftModel, path: str | os.PathLike, rank: int, zero3: bool) -> None:
    """Collective: rank 0 writes the adapter in peft's format (`PeftModel.from_pretrained(base, path)` loads it)."""
    adapter = {name: param for name, param in model.named_parameters() if LoraModel.prefix in name}
    with deepspeed.zero.GatheredParameters(list(adapter.values()), enabled=zero3):
        if rank == 0:
            # copy=True: on CPU, .to("cpu") would alias the live (or gathered, soon freed) parameter.
            state = {name: param.detach().to("cpu", copy=True) for name, param in adapter.items()}
            # No embedding layers to save: --target_modules wraps linear layers (and "auto" asks the Hub).
            model.save_pretrained(path, state_dict=state, save_embedding_layers=False)
