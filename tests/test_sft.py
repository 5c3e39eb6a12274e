"""The supervised warm start: loss on response tokens only, a model that learns its pairs, a cached folder."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from oat_cpgd.models.sft import MARKER_FILE, fine_tune, response_batch, tokenize_response

PAIRS = [("What is 12 + 3?", " \\boxed{15}"), ("What is 40 + 7?", " \\boxed{47}"), ("What is 5 + 5?", " \\boxed{10}")]


def test_labels_are_the_response_tokens_only():
    rows = [([1, 2, 3], [4, 5], [True, True]), ([6], [7, 8, 9], [True, False, True])]
    input_ids, attention_mask, labels = response_batch(rows, pad_id=0)
    assert input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, -100, 4, 5], [-100, 7, -100, 9, -100]]


def test_a_multi_turn_response_is_tokenized_turn_by_turn_and_trains_on_the_models_turns(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    turns = ["```python\nprint(2 * 3)\n```\n", "```output\n6\n```\n", " \\boxed{6}"]
    ids, trained = tokenize_response(tokenizer, turns)
    each = [tokenizer(turn, add_special_tokens=False).input_ids for turn in turns]
    assert ids == each[0] + each[1] + each[2] + [tokenizer.eos_token_id]
    assert trained == [True] * len(each[0]) + [False] * len(each[1]) + [True] * (len(each[2]) + 1)
    assert tokenize_response(tokenizer, turns[2]) == (each[2] + [tokenizer.eos_token_id], [True] * (len(each[2]) + 1))


def greedy(model_dir, prompt: str) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=10, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_fine_tune_learns_its_pairs_and_is_cached(tiny_model_path, tmp_path):
    out = tmp_path / "sft"
    assert all(greedy(tiny_model_path, prompt) != response for prompt, response in PAIRS)
    fine_tune(tiny_model_path, PAIRS, out, steps=40, batch_size=8, learning_rate=3e-3)
    # The responses are learned, each ended by EOS (generation stops right after it).
    assert [greedy(out, prompt) for prompt, _ in PAIRS] == [response for _, response in PAIRS]

    files = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    marker = json.loads((out / MARKER_FILE).read_text())
    fine_tune(tiny_model_path, PAIRS, out, steps=40, batch_size=8, learning_rate=3e-3)
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == files  # cached: not rewritten

    fine_tune(tiny_model_path, PAIRS[:2], out, steps=40, batch_size=8, learning_rate=3e-3)  # other pairs: rebuilt
    assert json.loads((out / MARKER_FILE).read_text())["inputs_sha256"] != marker["inputs_sha256"]
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} != files
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no scratch folder left
