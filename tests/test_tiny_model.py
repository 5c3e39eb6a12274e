"""The locally built tiny model: tokenizer, build cache, CLI, and transformers/vLLM agreement."""

import gc
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from oat_cpgd.models.tiny import COUNTDOWN_PROMPT, build_tiny_model, read_corpus

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2, num_kv_heads=1, vocab_size=512)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


@settings(max_examples=300, deadline=None)
@given(text=st.text())
@example(text="NUL \x00 and \x7f, emoji 🙂👍🏽🇫🇷, zero width \u200b\ufeff, 漢字 עברית ∑∫√")
@example(text="decomposed e\u0301 vs composed \u00e9, tabs\t\tand\r\nnewlines   ")
def test_tokenizer_round_trips_any_text(tokenizer, text):
    # Byte-level BPE: nothing is out of vocabulary. Like Qwen2, the tokenizer applies NFC first.
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_special_tokens_and_chat_template(tiny_model_path, tokenizer):
    eos_id, pad_id, start_id = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>", "<|im_start|>"])
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", eos_id)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", pad_id)
    assert len({eos_id, pad_id, start_id}) == 3
    config = json.loads((tiny_model_path / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"], config["dtype"]) == (eos_id, pad_id, "float32")
    assert GenerationConfig.from_pretrained(tiny_model_path).eos_token_id == [eos_id, pad_id]

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not tokenizer.apply_chat_template(messages, tokenize=False).endswith("assistant\n")
    ids = tokenizer(text).input_ids
    assert ids[0] == start_id and ids.count(eos_id) == 2


def test_build_is_deterministic_and_reused(tmp_path):
    first = build_tiny_model(tmp_path / "a", seed=3, **SMALL)
    second = build_tiny_model(tmp_path / "b", seed=3, **SMALL)
    for name in ["model.safetensors", "tokenizer.json", "config.json"]:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    weights = first / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert build_tiny_model(first, seed=3, **SMALL) == first
    assert weights.stat().st_mtime_ns == built_at  # reused, not rebuilt

    build_tiny_model(first, seed=4, **SMALL)  # other options: rebuilt in place
    assert weights.read_bytes() != (second / "model.safetensors").read_bytes()
    assert json.loads((first / "tiny_model.json").read_text())["seed"] == 4


def test_corpus_files(tmp_path):
    rows = [{"question": "Zorblax quuxes", "nums": [44, 19, 35], "target": 98, "meta": {"note": "ok"}}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([{"problem": "Find $x$."}, ["two", "strings"]]))
    (tmp_path / "c.txt").write_text("first line\n\nsecond line\n")
    files = [tmp_path / name for name in ["a.jsonl", "b.json", "c.txt"]]
    assert read_corpus(files) == [
        "Zorblax quuxes\n[44, 19, 35]\nok",
        "Find $x$.",
        "two",
        "strings",
        "first line\n",
        "second line\n",
    ]

    (tmp_path / "words.txt").write_text("Zorblax quuxes the snark.\n" * 200)
    model_dir = build_tiny_model(tmp_path / "model", corpus_files=[tmp_path / "words.txt"], **SMALL)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(tokenizer.tokenize(" quuxes")) == 1  # learned from the given corpus


@pytest.mark.slow
def test_cli_builds_the_default_model(tmp_path):
    out = tmp_path / "tiny"
    result = subprocess.run(
        [sys.executable, "-m", "oat_cpgd.models.tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]) == out
    saved = {path.name for path in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= saved
    # The CLI's defaults are the API's: the API finds the folder complete and keeps it.
    built_at = (out / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(out)
    assert (out / "model.safetensors").stat().st_mtime_ns == built_at


@pytest.mark.slow
def test_vllm_greedy_matches_transformers(tiny_model_path, tokenizer):
    from vllm import LLM, SamplingParams

    questions = [COUNTDOWN_PROMPT.format(nums=[44, 19, 35], target=98), "Janet has 16 eggs and eats 3. How many left?"]
    chats = [[{"role": "user", "content": question}] for question in questions]
    prompts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    prompts += ["The answer is", "Ünïcödé ✓ 🙂 and \\boxed{"]
    max_new_tokens = 24

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    expected = []
    for prompt in prompts:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(
            input_ids, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        tokens = out.sequences[0, input_ids.shape[1] :].tolist()
        logprobs = [torch.log_softmax(logits[0], -1)[t].item() for logits, t in zip(out.logits, tokens, strict=True)]
        expected.append((input_ids[0].tolist(), tokens, logprobs))

    llm = LLM(model=str(tiny_model_path), dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
    try:
        outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_new_tokens, logprobs=0))
    finally:
        del llm  # give the engine's memory back to later tests
        gc.collect()

    for output, (prompt_ids, tokens, logprobs) in zip(outputs, expected, strict=True):
        completion = output.outputs[0]
        assert output.prompt_token_ids == prompt_ids  # vLLM tokenizes as transformers does
        assert list(completion.token_ids) == tokens
        vllm_logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens, strict=True)]
        assert vllm_logprobs == pytest.approx(logprobs, abs=1e-3)
