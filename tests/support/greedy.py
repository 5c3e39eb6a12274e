"""Greedy decoding by transformers, to check vLLM's against: same stop tokens, no forced length."""

import torch


def eos_ids(model: torch.nn.Module) -> set[int]:
    """The tokens that end generation: the generation config's eos ids (vLLM stops on the same ones)."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def hf_greedy(model: torch.nn.Module, prompt_ids: list[list[int]], max_new: int) -> list[list[int]]:
    """Each prompt's greedy response, up to `max_new` tokens or its first eos (kept), as vLLM returns it."""
    outputs = []
    for ids in prompt_ids:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False)
        outputs.append(out[0, len(ids) :].tolist())
    return outputs


def assert_same_greedy(vllm_out: list[list[int]], hf_out: list[list[int]], model: torch.nn.Module, max_new: int):
    """vLLM's responses are transformers' exactly: all `max_new` tokens, or both stop at the same eos.

    Not a prefix comparison: an empty or cut-short vLLM response fails.
    """
    assert len(vllm_out) == len(hf_out) > 0
    stops = eos_ids(model)
    for v, h in zip(vllm_out, hf_out, strict=True):
        assert v, "vLLM returned an empty response"
        assert len(h) == max_new or h[-1] in stops, h  # transformers stopped at max_new or on an eos
        assert v == h, (v, h)
