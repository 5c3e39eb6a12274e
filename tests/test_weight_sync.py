"""The pieces of the learner -> actor weight transfer on their own (the transfer itself runs in
test_actor, test_learner and test_loop with real engines)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from oat_cpgd.learners.weights import ModelWeights
from oat_cpgd.roles import ActorGroup
from oat_cpgd.weight_sync import transfer_backend

REPO = Path(__file__).resolve().parents[1]


def test_backend_follows_the_devices():
    assert transfer_backend(on_cuda=False, collocate=False) == "gloo"
    assert transfer_backend(on_cuda=False, collocate=True) == "gloo"
    assert transfer_backend(on_cuda=True, collocate=False) == "nccl"
    assert transfer_backend(on_cuda=True, collocate=True) == "ipc"  # NCCL cannot pair two processes on one GPU


def test_each_actor_gets_its_own_block_of_ranks():
    # Rank 0 is the sender; an actor with tensor parallelism 2 has two workers.
    assert ActorGroup(["a", "b", "c"], [1, 2, 1]).rank_offsets == [1, 2, 4]
    assert ActorGroup(["a"], [4]).rank_offsets == [1]


def test_tied_model_sends_the_head_as_well(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    assert model.config.tie_word_embeddings and "lm_head.weight" not in dict(model.named_parameters())
    source = ModelWeights(model)
    sent = dict(source)
    assert sent.keys() == {name for name, _ in model.named_parameters()} | {"lm_head.weight"}
    assert sent["lm_head.weight"] is not None and torch.equal(sent["lm_head.weight"], sent["model.embed_tokens.weight"])
    # What is declared is what is sent, in the same order: the receivers size their buffers from it.
    assert [(m.name, m.dtype, m.shape) for m in source.metadata()] == [
        (name, t.dtype, tuple(t.shape)) for name, t in source
    ]
    assert list(sent)[0] == "model.embed_tokens.weight" and list(sent)[-1] == "lm_head.weight"


def test_untied_model_sends_its_own_head():
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)  # fmt: skip
    model = Qwen2ForCausalLM(config)
    sent = dict(ModelWeights(model))
    assert sent.keys() == dict(model.named_parameters()).keys()
    assert not torch.equal(sent["lm_head.weight"], sent["model.embed_tokens.weight"])


def test_weights_are_gathered_one_layer_at_a_time(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    groups = ModelWeights(model).gather_groups
    layers = model.config.num_hidden_layers
    assert [group[0].rsplit(".", 1)[0] for group in groups] == [
        "model.embed_tokens",
        *(f"model.layers.{i}.self_attn.q_proj" for i in range(layers)),
        "model.norm",
        "lm_head",
    ]
    for i, group in enumerate(groups[1:-2]):  # a layer's weights, all of them, in one group
        assert {name for name, _ in model.named_parameters() if name.startswith(f"model.layers.{i}.")} == set(group)


@pytest.mark.slow
def test_the_learner_side_imports_without_vllm_or_ray():
    """The learner trains, merges LoRA and saves where vLLM and Ray are not installed (scripts/gpu_check.sh)."""
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.partition('.')[0] in ('vllm', 'ray'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import oat_cpgd.learners, oat_cpgd.learners.lora, oat_cpgd.learners.saving, oat_cpgd.learners.weights\n"
        "import oat_cpgd.placement  # the plain value the learners take\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
