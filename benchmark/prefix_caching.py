"""Rollout generation time with vLLM prefix caching on and off: same actor, same seeded work, interleaved.

    python benchmark/prefix_caching.py [--model both|tiny|smollm2|DIR] [--prompts 8] [--samples 8 16]
        [--max-tokens 64] [--rounds 5] [--threads N]

One process per model holds two oat_cpgd actors (vLLM engines) that differ only in
--enable_prefix_caching. A rollout is what the loop's actor generates: chat-formatted GSM8K
prompts (test split, the first --prompts), each sampled --samples times with a per-prompt seed
(oat_cpgd.rollout.request_seeds), temperature 1, the processed log-prob of every token, exactly
--max-tokens new tokens a sample (min = max: equal work whatever is sampled). Before each timed
rollout the engine's prefix cache is reset, as the weight sync does after every step: a hit can
then only come from the rollout's own prompts (a prompt's K samples sharing its prefill), never
from the previous round. Each engine is warmed up once; then every round times both, on then off,
then off then on in the next round (A B B A ...), so load from other processes hits both alike.
Medians over the rounds are reported, and the median of the rounds' on / off ratios, for wall time
and for CPU time (user + system: less sensitive to other processes on a shared machine).

Both engines get the same seeds, so their samples must be the same: the script checks that the
token ids are equal (and reports the largest log-prob difference), which is what resuming and
restarting actors rely on.

Prefix caching reuses whole KV blocks only: vLLM's CPU backend uses 128-token blocks (CUDA: 16), so
on CPU a prompt shares only its first 128 x floor(length / 128) tokens. The table shows the prompt
lengths and the share of the rollout's prompt tokens that caching can skip ("shareable": the full
blocks of every sample but one); the JSON has vLLM's num_cached_tokens (one figure per prompt). Threads: --threads (default: every CPU this
process may use) is OMP_NUM_THREADS; both engines run in this process. Writes
.cache/bench/prefix_caching.json (and one .tiny.json / .smollm2.json per model). Say which allocator
settings (MALLOC_* variables) a reported run used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from generation_throughput import (  # this script's folder is on sys.path
    OUT_DIR,
    REPO,
    CpuClock,
    each_model,
    model_path,
)

MODES = {"on": True, "off": False}


def bench_one(name: str, options: argparse.Namespace) -> list[dict]:
    """Both engines on one model; one result row per --samples value."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoTokenizer

    from oat_cpgd.actors import Actor
    from oat_cpgd.args import PPOArgs
    from oat_cpgd.data import build_prompts, load_split
    from oat_cpgd.placement import local_nodes, plan_placement
    from oat_cpgd.rollout import request_seeds

    path = model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = load_split(str(REPO.parent / "shared" / "data" / "gsm8k"), f"test[:{options.prompts}]")
    prompts = build_prompts(rows, tokenizer, input_key="question", output_key="final_answer", apply_chat_template=True)
    prompt_ids = prompts.prompt_ids
    requests = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]

    actors = {}
    for mode, caching in MODES.items():
        args = PPOArgs(
            pretrain=path,
            oracle="gsm8k",
            num_samples=max(options.samples),
            generate_max_length=options.max_tokens,
            eval_generate_max_length=options.max_tokens,
            prompt_max_length=1024,
            rollout_batch_size=options.prompts,
            train_batch_size=options.prompts,
            enable_prefix_caching=caching,
            oracle_workers=1,
        )
        args.resolve()
        actors[mode] = Actor(args, plan_placement(local_nodes(), args))

    def rollout(mode: str, samples: int, round_: int):
        """One seeded rollout from an empty prefix cache: (outputs, seconds, cores)."""
        actor = actors[mode]
        sampling = Actor.sampling_params(n=samples, temperature=1.0, top_p=1.0, max_tokens=options.max_tokens)
        sampling.min_tokens = options.max_tokens
        seeds = request_seeds(options.seed, round_, 0, list(range(len(prompt_ids))))
        actor.llm.reset_prefix_cache()  # as after every weight sync (Actor.finish_weight_update)
        with CpuClock() as clock:
            outputs = actor.llm.generate(requests, [Actor.seeded(sampling, s) for s in seeds], use_tqdm=False)
        return outputs, clock.wall, clock.cpu

    results = []
    for samples in options.samples:
        for mode in MODES:
            rollout(mode, samples, options.rounds)  # warm-up, with seeds no timed round uses
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        max_logprob_gap = 0.0
        for round_ in range(options.rounds):
            order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
            outputs = {}
            for mode in order:
                outputs[mode], seconds, cpu_seconds = rollout(mode, samples, round_)
                cached = sum(o.num_cached_tokens or 0 for o in outputs[mode])
                runs[mode].append({"seconds": seconds, "cpu_seconds": cpu_seconds, "vllm_num_cached_tokens": cached})
                print(f"  {name} K={samples} prefix caching {mode} round {round_}: {seconds:.2f} s", flush=True)
            # The same seeds give the same samples with and without prefix caching.
            on, off = (
                [
                    [
                        (list(c.token_ids), [step[t].logprob for step, t in zip(c.logprobs, c.token_ids, strict=True)])
                        for c in o.outputs
                    ]
                    for o in outputs[mode]
                ]
                for mode in MODES
            )
            assert [[ids for ids, _ in g] for g in on] == [[ids for ids, _ in g] for g in off], "samples differ"
            for group_on, group_off in zip(on, off, strict=True):
                for (_, lp_on), (_, lp_off) in zip(group_on, group_off, strict=True):
                    max_logprob_gap = max(max_logprob_gap, *(abs(a - b) for a, b in zip(lp_on, lp_off, strict=True)))

        block = actors["on"].llm.llm_engine.vllm_config.cache_config.block_size
        result = {
            "model": name,
            "path": path,
            "prompts": len(prompt_ids),
            "prompt_tokens": [len(ids) for ids in prompt_ids],
            "samples": samples,
            "max_tokens": options.max_tokens,
            "rounds": options.rounds,
            "block_size": block,
            # Prompt tokens the K samples of a prompt need not prefill again: all but one sample reuse its full blocks.
            "shareable_prefill_share": sum((samples - 1) * block * (len(ids) // block) for ids in prompt_ids)
            / (samples * sum(len(ids) for ids in prompt_ids)),
            "same_samples": True,  # asserted above, every round
            "max_logprob_gap": max_logprob_gap,
            "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
            "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        }
        for mode, mode_runs in runs.items():
            result[mode] = {
                "seconds": statistics.median(r["seconds"] for r in mode_runs),
                "cpu_seconds": statistics.median(r["cpu_seconds"] for r in mode_runs),
                "vllm_num_cached_tokens": statistics.median(r["vllm_num_cached_tokens"] for r in mode_runs),
                "runs": mode_runs,
            }
        # Ratio of pairs, round by round: drift in machine speed cancels within a round.
        for clock in ("seconds", "cpu_seconds"):
            pair_ratios = [a[clock] / b[clock] for a, b in zip(runs["on"], runs["off"], strict=True)]
            result[f"ratio_on_over_off_{clock}"] = statistics.median(pair_ratios)
            result[f"ratio_on_over_off_{clock}_range"] = [min(pair_ratios), max(pair_ratios)]
        results.append(result)
    for actor in actors.values():
        actor.close()
    return results


def print_table(results: list[dict]) -> None:
    print(
        f"\n{'model':<9}{'K':>4}{'tokens':>8}{'clock':>13}{'on':>8}{'off':>8}{'on/off':>8}{'(min-max)':>14}{'shareable':>11}"
    )
    for r in results:
        tokens = r["prompts"] * r["samples"] * r["max_tokens"]
        for clock in ("seconds", "cpu_seconds"):
            low, high = r[f"ratio_on_over_off_{clock}_range"]
            print(
                f"{r['model']:<9}{r['samples']:>4}{tokens:>8}{clock:>13}{r['on'][clock]:>8.2f}{r['off'][clock]:>8.2f}"
                f"{r[f'ratio_on_over_off_{clock}']:>8.3f}{f'{low:.3f}-{high:.3f}':>14}{r['shareable_prefill_share']:>11.1%}"
            )
    for r in {r["model"]: r for r in results}.values():
        print(
            f"{r['model']}: prompt tokens {r['prompt_tokens']} (block size {r['block_size']}); "
            f"same samples on/off: {r['same_samples']}, largest log-prob gap {r['max_logprob_gap']:.2g}"
        )
    if results:
        r = results[0]
        print(
            f"(medians of {r['rounds']} interleaved rounds; on/off: median of the rounds' ratios; cpu_seconds: "
            f"the process's user + system time; {r['prompts']} prompts x K samples x {r['max_tokens']} new tokens; "
            f"OMP_NUM_THREADS={r['threads']['OMP_NUM_THREADS']}; malloc {r['malloc'] or 'default'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="both", help="both, tiny, smollm2, or a model folder")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed rollouts per mode and K (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, default=OUT_DIR / "prefix_caching.json")
    options = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(options.threads))

    results = bench_one(options.model, options) if options.model != "both" else each_model(__file__, options.json)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"results: {options.json}")


if __name__ == "__main__":
    main()
