"""Actor generation throughput: oat_cpgd's vLLM actor against transformers' generate, same model and work.

    python benchmark/generation_throughput.py [--model both|tiny|smollm2|DIR] [--prompts 8] [--samples 4]
        [--max-tokens 32] [--repeats 3] [--threads N]

Both engines get the same batch: the same chat-formatted GSM8K prompts, each sampled
`--samples` times in one call (vLLM: one `generate` of all prompts with n=samples;
transformers: one left-padded `generate` of all prompts with num_return_sequences=samples),
with the same sampling (temperature 1, top-p 1, no top-k) and exactly `--max-tokens` new
tokens per sample (min = max, so neither stops early: equal work). vLLM also returns each
token's log-prob, as rollouts need; transformers does not, which if anything favours it.
Each engine is warmed up on the full batch, then the timed runs alternate (vLLM, transformers,
vLLM, ...) so load from other processes hits both alike; medians are reported.

Threads: `--threads` (default: every CPU this process may use) is OMP_NUM_THREADS for both, and
transformers runs with torch.set_num_threads(threads). The table shows the threads each engine
was given and the CPU-seconds per wall-second it actually used ("cores").

`--model both` (the default) runs the tiny local model and SmolLM2-135M-Instruct
(oat_cpgd.models.smollm2), each in its own process. Prints a table and writes
.cache/bench/generation_throughput.json (and one .tiny.json / .smollm2.json per model). The ratio vLLM / transformers, not the absolute
numbers, is the figure to compare across machines. Say which allocator settings (MALLOC_*
variables) a reported run used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
OUT_DIR = CACHE / "bench"
MODELS = ("tiny", "smollm2")


def model_path(name: str) -> str:
    if name == "tiny":
        from oat_cpgd.models.tiny import build_tiny_model

        return str(build_tiny_model(CACHE / "test_models" / "tiny"))
    if name == "smollm2":
        from oat_cpgd.models.smollm2 import build_smollm2

        return str(build_smollm2(CACHE / "test_models" / "smollm2"))
    return name  # a model folder


class CpuClock:
    """CPU-seconds used by this process and its children (a multiprocess vLLM engine) while in the block."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()

    def _cpu(self) -> float:
        total = 0.0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except Exception:  # a child that just exited
                pass
        return total

    def __enter__(self) -> CpuClock:
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = self._cpu() - self.cpu


def bench_one(name: str, options: argparse.Namespace) -> dict:
    """Warm up both engines on one model, then time them alternately; return the result row."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oat_cpgd.actors import Actor
    from oat_cpgd.args import PPOArgs
    from oat_cpgd.data import build_prompts, load_split
    from oat_cpgd.placement import local_nodes, plan_placement

    path = model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = load_split(str(REPO.parent / "shared" / "data" / "gsm8k"), f"test[:{options.prompts}]")
    prompts = build_prompts(rows, tokenizer, input_key="question", output_key="final_answer", apply_chat_template=True)
    prompt_lengths = [len(ids) for ids in prompts.prompt_ids]

    args = PPOArgs(
        pretrain=path,
        oracle="gsm8k",
        num_samples=options.samples,
        generate_max_length=options.max_tokens,
        eval_generate_max_length=options.max_tokens,
        prompt_max_length=1024,
        rollout_batch_size=options.prompts,
        train_batch_size=options.samples,
    )
    args.resolve()
    # vLLM's CPU worker replaces torch.set_num_threads with a no-op in its process (the actor's
    # engine runs in this one by default): keep the real one for transformers.
    set_num_threads = torch.set_num_threads
    actor = Actor(args, plan_placement(local_nodes(), args))
    in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
    vllm_threads = torch.get_num_threads() if in_process else None  # the engine's, when it runs here
    sampling = Actor.sampling_params(
        n=options.samples, temperature=1.0, top_p=1.0, top_k=-1, max_tokens=options.max_tokens
    )
    sampling.min_tokens = options.max_tokens

    set_num_threads(options.threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts.prompts, return_tensors="pt", padding=True, add_special_tokens=False)

    def run_vllm(max_tokens: int) -> int:
        params = sampling.clone()
        params.max_tokens = params.min_tokens = max_tokens
        groups = actor.generate(prompts.prompt_ids, params)
        return sum(len(s.token_ids) for g in groups for s in g)

    def run_hf(max_tokens: int) -> int:
        set_num_threads(options.threads)
        with torch.inference_mode():
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                num_return_sequences=options.samples,
                pad_token_id=tokenizer.pad_token_id,
            )
        return out[:, batch["input_ids"].shape[1] :].numel()

    engines = {"vllm": run_vllm, "transformers": run_hf}
    warmup_tokens = min(8, options.max_tokens)
    for run in engines.values():
        run(warmup_tokens)
    timings: dict[str, list[dict]] = {engine: [] for engine in engines}
    for repeat in range(options.repeats):
        for engine, run in engines.items():
            torch.manual_seed(repeat)
            with CpuClock() as clock:
                tokens = run(options.max_tokens)
            timings[engine].append({"tokens": tokens, "seconds": clock.wall, "cores": clock.cpu / clock.wall})
            print(f"  {name} {engine} run {repeat}: {tokens / clock.wall:.1f} tokens/s", flush=True)
    actor.close()

    expected = options.prompts * options.samples * options.max_tokens
    result = {
        "model": name,
        "path": path,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompts": len(prompts.prompt_ids),
        "samples": options.samples,
        "batch": len(prompts.prompt_ids) * options.samples,
        "max_tokens": options.max_tokens,
        "prompt_tokens": {"min": min(prompt_lengths), "max": max(prompt_lengths)},
        "repeats": options.repeats,
        "threads": {
            "requested": options.threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch_transformers": torch.get_num_threads(),
            "torch_vllm": vllm_threads,
            "vllm_multiprocessing": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"),
        },
        "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }
    for engine, runs in timings.items():
        assert all(r["tokens"] == expected for r in runs), (engine, [r["tokens"] for r in runs], expected)
        result[engine] = {
            "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
            "cores": statistics.median(r["cores"] for r in runs),
            "runs": runs,
        }
    result["ratio_vllm_over_transformers"] = result["vllm"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    return result


def print_table(results: list[dict]) -> None:
    print(f"\n{'model':<10}{'engine':<24}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'threads':>9}{'cores':>7}")
    for r in results:
        for engine, label in [("vllm", "oat_cpgd actor (vLLM)"), ("transformers", "transformers generate")]:
            e = r[engine]
            tokens = r["batch"] * r["max_tokens"]
            print(
                f"{r['model']:<10}{label:<24}{tokens:>8}{e['seconds']:>9.2f}{e['tokens_per_s']:>10.1f}"
                f"{r['threads']['requested']:>9}{e['cores']:>7.2f}"
            )
        print(f"{r['model']:<10}{'ratio vLLM / transformers':<34}{r['ratio_vllm_over_transformers']:>19.2f}")
    if results:
        r = results[0]
        print(
            f"(medians of {r['repeats']} interleaved runs; batch {r['prompts']} prompts x {r['samples']} samples, "
            f"{r['max_tokens']} new tokens each; OMP_NUM_THREADS={r['threads']['OMP_NUM_THREADS']})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="both", help="both, tiny, smollm2, or a model folder")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine (median reported)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, default=OUT_DIR / "generation_throughput.json")
    options = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(options.threads))

    results = [bench_one(options.model, options)] if options.model != "both" else each_model(__file__, options.json)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"results: {options.json}")


def each_model(script: str, json_path: Path) -> list:
    """`script` run again with this command line once per model, each in its own process (an in-process
    vLLM engine cannot be shut down and replaced); their JSON results, joined."""
    results = []
    for name in MODELS:
        part = json_path.with_name(f"{json_path.stem}.{name}.json")
        subprocess.run([sys.executable, script, *sys.argv[1:], "--model", name, "--json", str(part)], check=True)
        results += json.loads(part.read_text())
    return results


if __name__ == "__main__":
    main()
