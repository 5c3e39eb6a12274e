"""The generation half of a step's floor: a bare vLLM engine sampling benchmark/step_time.py's batch.

    python benchmark/jobs/bare_generate.py --model DIR --data GSM8K.jsonl --new-tokens N --out BATCH.json
        [--repeats 5]

One process and the engine alone: vLLM with the options oat_cpgd's actor gives it
(`oat_cpgd.actors.actor.engine_options`; on a CPU fp32, eager, whole prefills, prefix caching,
log-probs after temperature, its engine core in this process), the job's first 8 chat-formatted GSM8K
prompts x 8 samples at temperature 1 with the sampled token's log-prob (what a learner needs). No Ray,
no oracle, no weight sync. Medians of --repeats after one warm-up. Writes the times and the last batch
(token ids, log-probs, a reward per response alternating 1 and 0) for the training half:
learner_overhead.py --batch.
"""

import argparse
import json
import os
import statistics
import time

from grpo_job import SAMPLES, TEMPERATURE, prompt_ids  # this script's folder is on sys.path

from oat_cpgd.args import PPOArgs
from oat_cpgd.placement import local_nodes, plan_placement


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    args = PPOArgs(pretrain=options.model, generate_max_length=options.new_tokens, gpus=1)
    args.resolve()
    placement = plan_placement(local_nodes(), args)

    from oat_cpgd.actors.actor import Actor, configure_vllm_env, engine_options

    configure_vllm_env(args, placement)
    import vllm

    llm = vllm.LLM(**engine_options(args, placement, 0))
    prompts = prompt_ids(llm.get_tokenizer(), options.data)
    sampling = Actor.sampling_params(
        n=SAMPLES, temperature=TEMPERATURE, top_p=1.0, max_tokens=options.new_tokens
    )  # the actor's: logprobs=0

    def generate(seed: int):
        requests = [{"prompt_token_ids": list(ids)} for ids in prompts]
        return llm.generate(requests, Actor.seeded(sampling, seed), use_tqdm=False)

    generate(0)  # warm-up
    times = []
    for repeat in range(options.repeats):
        start = time.perf_counter()
        outputs = generate(repeat + 1)
        times.append(time.perf_counter() - start)
    batch = [
        {
            "prompt_ids": list(output.prompt_token_ids),
            "response_ids": list(completion.token_ids),
            "logprobs": [next(iter(step.values())).logprob for step in completion.logprobs],
            "reward": float(sample % 2),
        }
        for output in outputs
        for sample, completion in enumerate(output.outputs)
    ]
    result = {
        "threads": len(os.sched_getaffinity(0)),
        "generate_time": times,
        "median": statistics.median(times),
        "response_len": statistics.mean(len(row["response_ids"]) for row in batch),
        "batch": batch,
    }
    with open(options.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
