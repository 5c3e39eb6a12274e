"""The learner's models, loaded and wrapped by DeepSpeed: the trained policy (and critic) and the
frozen reference."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import deepspeed
import torch
from deepspeed import DeepSpeedEngine
from deepspeed.accelerator import get_accelerator
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, PreTrainedModel

from oat_cpgd.args import PPOArgs
from oat_cpgd.learners.deepspeed_config import param_groups, reference_config
from oat_cpgd.learners.forward import Model
from oat_cpgd.learners.schedule import lr_scheduler

logger = logging.getLogger(__name__)


def set_distributed_env(rank: int, world_size: int) -> None:
    """RANK/WORLD_SIZE/LOCAL_RANK from the arguments where the launcher (e.g. Ray) did not set them."""
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RuntimeError("Learner needs MASTER_ADDR and MASTER_PORT in the environment.")
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world_size))
    # One device per process: Ray shows each learner only its own (index 0); on one node with
    # every device visible, the rank picks it.
    os.environ.setdefault("LOCAL_RANK", str(rank % get_accelerator().device_count()))


def attention_implementation(flash_attn: bool) -> str:
    if not flash_attn:
        return "sdpa"
    if get_accelerator().device_name() == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    logger.warning("--flash_attn needs CUDA and the flash_attn package; using sdpa attention instead.")
    return "sdpa"


def _model_kwargs(args: PPOArgs) -> dict:
    return {
        "dtype": torch.bfloat16 if args.bf16 else torch.float32,
        "attn_implementation": attention_implementation(args.flash_attn),
    }


def is_zero3(config: dict | None) -> bool:
    return config is not None and config["zero_optimization"]["stage"] == 3


@contextmanager
def zero3_init(config: dict | None) -> Iterator[None]:
    """While open, a model that `config` (the DeepSpeed configuration it will be wrapped with; None:
    none) gives ZeRO-3 loads partitioned.

    transformers then builds it inside `deepspeed.zero.Init`, so each rank allocates only its share
    (on its GPU under CUDA), and fills it a layer at a time: the layer is gathered, rank 0 copies it
    from the checkpoint (memory-mapped; the other ranks do not read it), and it is partitioned again.
    Loaded whole instead, every rank held the whole model in host memory wherever the checkpoint's
    dtype is not the run's (a bf16 checkpoint trained in fp32, the default, or the reverse); a
    checkpoint in the run's dtype stays mapped, its pages shared by a node's ranks. As OpenRLHF does
    (`HfDeepSpeedConfig` before `from_pretrained`, openrlhf/models/actor.py). transformers reads the
    configuration through a weak reference, set here and cleared on the way out.
    """
    if not is_zero3(config):
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    hf_config = HfDeepSpeedConfig(config)  # noqa: F841 (alive while loading: transformers keeps a weak reference)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


def load_language_model(path: str, args: PPOArgs, config: dict | None) -> PreTrainedModel:
    """The model at `path`, to be wrapped by DeepSpeed with `config` (partitioned as it loads under ZeRO-3)."""
    with zero3_init(config):
        return AutoModelForCausalLM.from_pretrained(path, **_model_kwargs(args))


def load_critic(args: PPOArgs, config: dict | None) -> PreTrainedModel:
    """A value head on the policy's architecture; no dropout, so old and new values agree."""
    path = args.critic_pretrain
    model_config = AutoConfig.from_pretrained(path, num_labels=1)
    model_config.classifier_dropout = 0.0  # (transformers 5 ignores it as a from_pretrained kwarg)
    with zero3_init(config):
        critic, loading = AutoModelForTokenClassification.from_pretrained(
            path, config=model_config, output_loading_info=True, **_model_kwargs(args)
        )
    zero_new_value_head(critic, loading["missing_keys"], zero3=is_zero3(config))
    return critic


def zero_new_value_head(critic: PreTrainedModel, missing_keys: list[str], zero3: bool) -> None:
    """Start a freshly added value head at V = 0, so the first advantages are the rewards rather
    than a random head's noise (which, on sparse rewards, can drown them for many steps).
    A critic loaded with its head keeps it. A head partitioned by ZeRO-3 is gathered to be zeroed."""
    head = [param for name, param in critic.named_parameters() if name in missing_keys]
    with deepspeed.zero.GatheredParameters(head, modifier_rank=0, enabled=zero3), torch.no_grad():
        for param in head:
            param.zero_()


def train_engine(model: PreTrainedModel, args: PPOArgs, config: dict, schedule_steps: float) -> DeepSpeedEngine:
    """`model` trained by DeepSpeed with `config` (`train_config`): ZeRO, AdamW, the LR schedule over
    `schedule_steps` optimizer steps."""
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, args.l2),
        config=config,
        lr_scheduler=partial(lr_scheduler, args=args, total_steps=schedule_steps),
    )
    return engine


def load_reference(args: PPOArgs, device: torch.device) -> Model:
    """Frozen; partitioned like the policy under ZeRO-3 (as it loads), otherwise a plain module (off the
    device with --ref_offload)."""
    config = reference_config(args, device.type == "cuda") if args.zero_stage == 3 else None
    model = load_language_model(args.ref_pretrain, args, config).eval().requires_grad_(False)
    if config is not None:
        engine, *_ = deepspeed.initialize(model=model, config=config)
        return engine
    return model.to("cpu" if args.ref_offload else device)


@contextmanager
def reference_on_device(reference: Model, args: PPOArgs, device: torch.device) -> Iterator[None]:
    """With --ref_offload, bring a plain reference module to the device for a pass (ZeRO-3 pages its own)."""
    move = args.ref_offload and not isinstance(reference, DeepSpeedEngine)
    if move:
        reference.to(device)
    try:
        yield
    finally:
        if move:
            reference.to("cpu")
