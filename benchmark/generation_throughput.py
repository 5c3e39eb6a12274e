"""Actor generation throughput: oat_cpgd's vLLM actor against transformers' generate, same model and prompts.

    python benchmark/generation_throughput.py [--prompts 32] [--samples 4] [--max-tokens 64]

Prints a table of generated tokens per second and the ratio actor / transformers; the ratio,
not the absolute numbers, is the figure to compare across machines. Uses the tiny local model
unless --model is given. Say which allocator settings (MALLOC_* variables) a reported run used.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder; default: the tiny local model")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    options = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oat_cpgd.actors import Actor
    from oat_cpgd.args import PPOArgs
    from oat_cpgd.data import build_prompts, load_split
    from oat_cpgd.models import build_tiny_model

    model_path = options.model or str(build_tiny_model(REPO / ".cache" / "test_models" / "tiny"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = load_split(str(REPO.parent / "shared" / "data" / "gsm8k"), f"test[:{options.prompts}]")
    prompts = build_prompts(rows, tokenizer, input_key="question", output_key="final_answer", prompt_max_length=1024)

    args = PPOArgs(
        pretrain=model_path,
        oracle="gsm8k",
        num_samples=options.samples,
        generate_max_length=options.max_tokens,
        eval_generate_max_length=options.max_tokens,
        prompt_max_length=1024,
        rollout_batch_size=options.prompts,
        train_batch_size=options.samples,
    )
    args.resolve()
    actor = Actor(args)
    # min_tokens keeps both sides generating exactly max_tokens per sample: equal work.
    import vllm

    sampling = vllm.SamplingParams(
        n=options.samples, temperature=1.0, max_tokens=options.max_tokens, min_tokens=options.max_tokens, logprobs=0
    )
    actor.generate(prompts.prompt_ids[:2], sampling)  # warm-up
    start = time.perf_counter()
    groups = actor.generate(prompts.prompt_ids, sampling)
    actor_seconds = time.perf_counter() - start
    actor_tokens = sum(len(s.token_ids) for g in groups for s in g)
    actor.close()

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    start = time.perf_counter()
    hf_tokens = 0
    with torch.no_grad():
        for text in prompts.prompts:
            batch = tokenizer([text], return_tensors="pt")
            out = model.generate(
                **batch,
                do_sample=True,
                max_new_tokens=options.max_tokens,
                min_new_tokens=options.max_tokens,
                num_return_sequences=options.samples,
                pad_token_id=tokenizer.pad_token_id,
            )
            hf_tokens += (out.shape[1] - batch["input_ids"].shape[1]) * options.samples
    hf_seconds = time.perf_counter() - start

    actor_rate, hf_rate = actor_tokens / actor_seconds, hf_tokens / hf_seconds
    print(f"\n{'engine':<28}{'tokens':>10}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'oat_cpgd actor (vLLM)':<28}{actor_tokens:>10}{actor_seconds:>10.2f}{actor_rate:>12.0f}")
    print(f"{'transformers generate':<28}{hf_tokens:>10}{hf_seconds:>10.2f}{hf_rate:>12.0f}")
    print(f"{'ratio actor / transformers':<28}{'':>20}{actor_rate / hf_rate:>12.2f}")


if __name__ == "__main__":
    main()
