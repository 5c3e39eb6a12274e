"""Does vLLM's CPU engine grow, round after round, on prompts of varying length? vLLM alone, no Ray.

    [LD_PRELOAD=libtcmalloc_minimal.so.4] [ONEDNN_PRIMITIVE_CACHE_CAPACITY=16] \\
        python benchmark/vllm_cpu_memory.py MODEL [--rounds 300] [--warmup 50]

Each round generates 4 samples of 16 tokens for 8 prompts of 20-200 random token ids (the soak's
rollout shape, benchmark/soak.py), with the engine core in this process; prints this process's RSS
at round 1 and every 50 rounds, and its growth from --warmup to the end. The allocator and oneDNN's
kernel cache are read at start-up, so each setting is its own command (oat_cpgd.cluster.cpu_actor_env
sets both for the library's actors).
"""

import argparse
import os
import random

import psutil

# Before vLLM's import: the engine in this process, and a 1 GiB KV cache (vLLM's default reserves 9-14 GiB).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model folder (e.g. the tiny one: python -m oat_cpgd.models.tiny --out DIR)")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    options = parser.parse_args()

    from vllm import LLM, SamplingParams

    llm = LLM(model=options.model, enforce_eager=True, max_model_len=512, seed=0, dtype="float32")
    sampling = SamplingParams(n=4, max_tokens=16, temperature=1.0)
    rng, process = random.Random(0), psutil.Process()
    print(f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}, "
          f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY', '(default)')}")  # fmt: skip
    rss = {}
    for round_ in range(1, options.rounds + 1):
        prompts = [
            {"prompt_token_ids": [rng.randrange(10, 1000) for _ in range(rng.randrange(20, 200))]} for _ in range(8)
        ]
        llm.generate(prompts, sampling, use_tqdm=False)
        if round_ == 1 or round_ % 50 == 0 or round_ == options.warmup:
            rss[round_] = process.memory_info().rss / 2**20
            print(f"round {round_}: RSS {rss[round_]:.1f} MiB", flush=True)
    growth = rss[options.rounds] - rss[options.warmup]
    print(f"growth from round {options.warmup} to {options.rounds}: {growth:+.1f} MiB")


if __name__ == "__main__":
    main()
