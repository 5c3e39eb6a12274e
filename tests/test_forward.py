"""The learner's forward passes (oat_cpgd.learners.forward) on real Hugging Face models, one process:
log-probs and their gradients read in chunks equal those of the model's own logits, and a chunked
backward keeps no [tokens, vocabulary] tensor."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM, Qwen2ForCausalLM

from oat_cpgd.algorithms import logprobs_from_logits
from oat_cpgd.learners.batch import collate
from oat_cpgd.learners.forward import CausalLM, has_dropout, read_response_tokens, takes_logits_to_keep
from oat_cpgd.types import Trajectory

TEMPERATURE = 0.7


def trajectories(vocab: int) -> list[Trajectory]:
    """Prompts and responses of different lengths (the span has padding at both ends)."""
    rng = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (9, 2), (3, 11), (6, 1)]
    out = []
    for prompt_len, response_len in shapes:
        ids = torch.randint(3, vocab, (prompt_len + response_len,), generator=rng).tolist()
        out.append(Trajectory(0, ids[:prompt_len], ids[prompt_len:], [0.0] * response_len, 1.0, False))
    return out


def direct_logprobs(model, batch) -> torch.Tensor:
    """The reference: the model's own logits at every position, log-softmax, 0 off the responses."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp = logprobs_from_logits(logits.float() / TEMPERATURE, batch.labels)
    return torch.where(batch.response_mask.bool(), logp, 0)


def grads_of(model, logp: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    (logp * weights).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


class WithoutLogitsToKeep(Qwen2ForCausalLM):
    """A model whose forward does not take `logits_to_keep`: its logits come at every position."""

    def forward(self, input_ids, attention_mask, use_cache=False):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


class WithoutOutputLayer(Qwen2ForCausalLM):
    """A model that names no output layer module (its logits are read as they come)."""

    def get_output_embeddings(self):
        return None


class WithUnusedOutputLayer(Qwen2ForCausalLM):
    """A model whose named output layer is not what its forward runs (as if it computed its logits
    otherwise): its logits are read as they come."""

    unused = torch.nn.Linear(32, 32)  # a class attribute: not one of the model's parameters

    def get_output_embeddings(self):
        return self.unused


def models(tiny_model_path):
    """The tiny Qwen2 model (tied output layer), the same without `logits_to_keep` or without a
    named output layer, and a Gemma2 with its logits soft-capped after the output layer."""
    tiny = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    without_logits_to_keep = WithoutLogitsToKeep.from_pretrained(tiny_model_path, dtype=torch.float32)
    without_output_layer = WithoutOutputLayer.from_pretrained(tiny_model_path, dtype=torch.float32)
    with_unused_output_layer = WithUnusedOutputLayer.from_pretrained(tiny_model_path, dtype=torch.float32)
    torch.manual_seed(0)
    capped = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=tiny.config.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            final_logit_softcapping=30.0,
        )
    )
    return {
        "tiny": tiny,
        "tiny_without_logits_to_keep": without_logits_to_keep,
        "tiny_without_output_layer": without_output_layer,
        "tiny_with_unused_output_layer": with_unused_output_layer,
        "soft_capped": capped,
    }


@pytest.mark.parametrize(
    ("name", "keeps_logits", "separable_head"),
    [
        ("tiny", True, True),
        ("tiny_without_logits_to_keep", False, True),
        ("tiny_without_output_layer", True, False),
        ("tiny_with_unused_output_layer", True, False),
        ("soft_capped", True, False),  # the soft cap is read from the model's own logits
    ],
)
@pytest.mark.parametrize("extra_chunks", [0, 2])
def test_chunked_logprobs_and_gradients_equal_the_models_own(
    tiny_model_path, name, keeps_logits, separable_head, extra_chunks
):
    """`extra_chunks`: another rank has that many more chunks, so this one runs as many empty ones
    (with a separable output layer, each chunk is one more run of it)."""
    model = models(tiny_model_path)[name]
    lm = CausalLM.of(model, torch.device("cpu"))
    assert (lm.keeps_logits, lm.separable_head) == (keeps_logits, separable_head)
    batch = collate(trajectories(model.config.vocab_size), 0, torch.device("cpu"))
    weights = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(1))

    expected = direct_logprobs(model, batch)
    expected_grads = grads_of(model, expected, weights)

    def read(chunk_tokens: int) -> torch.Tensor:
        return read_response_tokens(
            lm,
            batch,
            logprobs_from_logits,
            temperature=TEMPERATURE,
            chunk_tokens=chunk_tokens,
            reduce_max=lambda count: count + extra_chunks,
        )

    tokens = int(batch.response_mask.sum())
    output_layer_runs = []
    if separable_head:
        model.get_output_embeddings().register_forward_hook(lambda *_: output_layer_runs.append(1))
    for chunk_tokens in (0, 4, 7, 100):  # 21 response tokens: 1, 6, 3 and 1 chunks
        output_layer_runs.clear()
        logp = read(chunk_tokens)
        if separable_head:  # once in the model's forward (on no positions), then once a chunk
            assert len(output_layer_runs) == 1 + math.ceil(tokens / (chunk_tokens or tokens)) + extra_chunks
        torch.testing.assert_close(logp, expected, rtol=1e-5, atol=1e-5)
        grads = grads_of(model, logp, weights)
        for param, grad in grads.items():  # float rounding only: a relative gap of ~1e-6
            assert (grad - expected_grads[param]).norm() <= 1e-5 * expected_grads[param].norm(), param
        with torch.no_grad():
            torch.testing.assert_close(read(chunk_tokens), expected)


def saved_for_backward(model, compute) -> list[torch.Size]:
    """The shapes of the tensors autograd keeps for backward while `compute()` runs, but the model's weights."""
    shapes = []
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in weights:
            shapes.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return shapes


def test_a_chunked_backward_keeps_no_vocabulary_sized_tensor(tiny_model_path):
    model = models(tiny_model_path)["tiny"]
    lm = CausalLM.of(model, torch.device("cpu"))
    batch = collate(trajectories(model.config.vocab_size) * 8, 0, torch.device("cpu"))  # 168 response tokens
    tokens, vocab = int(batch.response_mask.sum()), model.config.vocab_size

    def largest_logits_kept(chunk_tokens: int) -> int:
        """The most elements of a kept [..., vocab] tensor (logits or their log-softmax parts)."""
        shapes = saved_for_backward(
            model,
            lambda: read_response_tokens(
                lm, batch, logprobs_from_logits, temperature=TEMPERATURE, chunk_tokens=chunk_tokens
            ),
        )
        return max((shape.numel() for shape in shapes if shape[-1] == vocab), default=0)

    assert largest_logits_kept(0) == tokens * vocab  # unchunked: every response token's logits
    assert largest_logits_kept(16) == 0  # chunked: recomputed in backward, 16 tokens at a time


def test_helpers_say_which_models_take_logits_to_keep_and_have_dropout(tiny_model_path):
    """Which models get logits only at the response span, which skip the old log-probs' pass (none with dropout)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert takes_logits_to_keep(model) and not has_dropout(model)
    config = AutoConfig.from_pretrained(tiny_model_path, attention_dropout=0.1)
    assert has_dropout(AutoModelForCausalLM.from_config(config))
    assert not takes_logits_to_keep(torch.nn.Linear(2, 2))
