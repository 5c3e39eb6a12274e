"""The generation half of a step's floor: a bare vLLM engine sampling benchmark/step_time.py's batch.

    python benchmark/jobs/bare_generate.py --model DIR --data GSM8K.jsonl --new-tokens N --out BATCH.json
        [--repeats 5]

One process and the engine alone: vLLM with the options oat_cpgd's actor gives it on a CPU (fp32,
eager, whole prefills, prefix caching, log-probs after temperature; its engine core in this process,
as the actor's), the job's first 8 chat-formatted GSM8K prompts x 8 samples at temperature 1 with
the sampled token's log-prob (what a learner needs). No Ray, no oracle, no weight sync. Medians of
--repeats after one warm-up. Writes the times and the last batch (token ids, log-probs, a reward per
response alternating 1 and 0) for the training half: learner_overhead.py --batch.
"""

import argparse
import json
import os
import statistics
import time

from grpo_job import PROMPTS, SAMPLES, TEMPERATURE  # this script's folder is on sys.path

from oat_cpgd.args import PPOArgs
from oat_cpgd.placement import Placement


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

    from oat_cpgd.actors.actor import Actor, configure_vllm_env, whole_prefills

    configure_vllm_env(args, Placement.learners_alone(0, on_cuda=False))
    import vllm

    llm = vllm.LLM(
        model=options.model,
        dtype="float32",
        seed=0,
        max_model_len=args.max_model_len,
        enforce_eager=True,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
        **whole_prefills(args.max_model_len),
    )
    tokenizer = llm.get_tokenizer()
    with open(options.data) as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(PROMPTS), f, strict=False)]
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
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
