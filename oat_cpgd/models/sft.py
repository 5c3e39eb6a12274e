"""Supervised fine-tuning on (prompt, response) pairs: a warm start before RL.

A short single-process torch loop, not the DeepSpeed learner: it runs once before a demo,
and a model that starts from nothing rarely samples a correct answer, so RL alone would
see no reward. The loss is the mean cross-entropy of the response tokens (and the EOS after
them); prompts are tokenized as the RL run tokenizes them, so the model meets the same text
there. A multi-turn response is a list of turns, the model's and the environment's in turn,
each tokenized on its own as a multi-turn rollout does (oat_cpgd.actors.episodes); the
environment's tokens are context, not trained on. The result is cached: the same model,
pairs and settings return the folder at once.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from oat_cpgd.models.folders import build_folder, is_built

# Bump when the training changes, so folders fine-tuned by older code are rebuilt.
SFT_VERSION = 1
MARKER_FILE = "sft.json"

Response: TypeAlias = str | Sequence[str]
"""A response's text, or its turns: the model's first, then the environment's and the model's in
alternation (the environment's are not trained on)."""


def tokenize_response(tokenizer, response: Response) -> tuple[list[int], list[bool]]:
    """(token ids, trained per token) of a response and the EOS that ends it: each turn tokenized on
    its own, the environment's turns (odd positions) not trained."""
    turns = [response] if isinstance(response, str) else list(response)
    ids, trained = [], []
    for index, turn in enumerate(turns):
        turn_ids = tokenizer(turn, add_special_tokens=False).input_ids
        ids += turn_ids
        trained += [index % 2 == 0] * len(turn_ids)
    return ids + [tokenizer.eos_token_id], trained + [True]


def response_batch(
    tokenized: Sequence[tuple[list[int], list[int], list[bool]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of right-padded (prompt, response, trained) rows; labels are
    -100 except at the response's trained tokens."""
    length = max(len(prompt) + len(response) for prompt, response, _ in tokenized)
    input_ids = torch.full((len(tokenized), length), pad_id)
    attention_mask = torch.zeros(len(tokenized), length, dtype=torch.long)
    labels = torch.full((len(tokenized), length), -100)
    for row, (prompt, response, trained) in enumerate(tokenized):
        end = len(prompt) + len(response)
        input_ids[row, :end] = torch.tensor(prompt + response)
        attention_mask[row, :end] = 1
        labels[row, len(prompt) : end] = torch.tensor(
            [t if keep else -100 for t, keep in zip(response, trained, strict=True)]
        )
    return input_ids, attention_mask, labels


def fine_tune(
    model_dir: str | Path,
    pairs: Sequence[tuple[str, Response]],
    out_dir: str | Path,
    *,
    steps: int,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Fine-tune `model_dir` on `pairs` (prompt text, response) with AdamW and a constant
    learning rate for `steps` steps of `batch_size` pairs drawn with replacement, and save the
    model and tokenizer into `out_dir`. Returns at once if `out_dir` was built from the same inputs."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.json")) + [model_dir / "model.safetensors"]:
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(json.dumps(list(pairs)).encode())
    marker = {
        "sft_version": SFT_VERSION,
        "inputs_sha256": digest.hexdigest(),
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
    }
    if is_built(out_dir, MARKER_FILE, marker):
        return out_dir

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenized = [
        (tokenizer(prompt, add_special_tokens=False).input_ids, *tokenize_response(tokenizer, response))
        for prompt, response in pairs
    ]
    torch.manual_seed(seed)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        input_ids, attention_mask, labels = response_batch(rng.choices(tokenized, k=batch_size), tokenizer.pad_token_id)
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_folder(out_dir, MARKER_FILE, marker, write)
