"""The collocated (CUDA-IPC) weight sync's payload."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM
from vllm.distributed.weight_transfer.base import ParamMeta
from vllm.distributed.weight_transfer.packed_tensor import DEFAULT_PACKED_BUFFER_SIZE_BYTES

from oat_cpgd.weight_sync import ModelWeights, trainer_init_info


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)


def test_the_ipc_sender_packs_into_one_buffer_that_holds_the_largest_weight(model):
    tiny = trainer_init_info("ipc", rank=0, world_size=2, source=ModelWeights(model))
    assert tiny.packed and tiny.packed_buffer_size_bytes == DEFAULT_PACKED_BUFFER_SIZE_BYTES
    # Qwen2.5-7B's embedding in bf16, 1.015 GiB, does not fit vLLM's default buffer.
    qwen_7b = [ParamMeta("model.embed_tokens.weight", torch.bfloat16, (152064, 3584))]
    info = trainer_init_info("ipc", rank=0, world_size=2, source=SimpleNamespace(metadata=lambda: qwen_7b))
    assert info.packed and info.packed_buffer_size_bytes == 152064 * 3584 * 2 > DEFAULT_PACKED_BUFFER_SIZE_BYTES
