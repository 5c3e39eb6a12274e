"""The supervised warm start: loss on response tokens only, a model that learns its pairs, a cached folder."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from oat_cpgd.models.sft import MARKER_FILE, fine_tune, response_batch

PAIRS = [("What is 12 + 3?", " \\boxed{15}"), ("What is 40 + 7?", " \\boxed{47}"), ("What is 5 + 5?", " \\boxed{10}")]


def test_labels_are_the_response_tokens_only():
    input_ids, attention_mask, labels = response_batch([([1, 2, 3], [4, 5]), ([6], [7, 8, 9])], pad_id=0)
    assert input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, -100, 4, 5], [-100, 7, 8, 9, -100]]


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
