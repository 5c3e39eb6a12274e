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
from oat_cpgd.learners.deepspeed_config import param_groups, reference_config, train_config
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


def load_language_model(path: str, args: PPOArgs) -> PreTrainedModel:
    # transformers can only build ZeRO-3 models partitioned through accelerate, which we do not
    # depend on: each rank loads the full weights to host memory and deepspeed.initialize partitions them.
    return AutoModelForCausalLM.from_pretrained(path, **_model_kwargs(args))


def load_critic(args: PPOArgs) -> PreTrainedModel:
    """A value head on the policy's architecture; no dropout, so old and new values agree."""
    path = args.critic_pretrain or args.pretrain
    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0  # (transformers 5 ignores it as a from_pretrained kwarg)
    critic, loading = AutoModelForTokenClassification.from_pretrained(
        path, config=config, output_loading_info=True, **_model_kwargs(args)
    )
    zero_new_value_head(critic, loading["missing_keys"])
    return critic


def zero_new_value_head(critic: PreTrainedModel, missing_keys: list[str]) -> None:
    """Start a freshly added value head at V = 0, so the first advantages are the rewards rather
    than a random head's noise (which, on sparse rewards, can drown them for many steps).
    A critic loaded with its head keeps it."""
    with torch.no_grad():
        for name, param in critic.named_parameters():
            if name in missing_keys:
                param.zero_()


def train_engine(
    model: PreTrainedModel, args: PPOArgs, world_size: int, learning_rate: float, schedule_steps: float, on_cuda: bool
) -> DeepSpeedEngine:
    """`model` trained by DeepSpeed: ZeRO, AdamW, the LR schedule over `schedule_steps` optimizer steps."""
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, args.l2),
        config=train_config(args, world_size, learning_rate, on_cuda),
        lr_scheduler=partial(lr_scheduler, args=args, total_steps=schedule_steps),
    )
    return engine


def reference_engine(model: PreTrainedModel, args: PPOArgs, device: torch.device) -> Model:
    """Frozen; partitioned like the policy under ZeRO-3, otherwise a plain module (off the device with --ref_offload)."""
    model = model.eval().requires_grad_(False)
    if args.zero_stage == 3:
        engine, *_ = deepspeed.initialize(model=model, config=reference_config(args, device.type == "cuda"))
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
