"""Weight updates inside the vLLM worker process.

vLLM re-packs linear weights for its CPU kernels, so `model.load_weights` after start-up
fails there; the worker's `reload_weights` works on CPU and CUDA alike. The weights
arrive as safetensors bytes: they cross vLLM's RPC intact in both of its process modes
(nested tensors would arrive as plain lists in multiprocess mode).
"""

from __future__ import annotations

import logging

import safetensors.torch

# The in-place reload warns, at every sync, that rotary embeddings (which have no weights) got none.
logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)


class WeightReceiver:
    """Mixed into vLLM's worker class via `worker_extension_cls`."""

    def load_safetensors_bytes(self, data: bytes) -> None:
        state = safetensors.torch.load(data)
        # A trainer's named_parameters() lists a tied lm_head once, as the embedding; vLLM's CPU
        # backend keeps a separately packed lm_head that only an explicit lm_head.weight refreshes.
        tied = getattr(self.model_runner.model_config.hf_text_config, "tie_word_embeddings", False)
        if tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        self.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)
