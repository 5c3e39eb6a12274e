"""The learner against a bare DeepSpeed loop on the same batch, and its memory against response length.

    python benchmark/jobs/learner_overhead.py --model DIR --data GSM8K.jsonl --out RESULT.json
        [--memory-model DIR] [--repeats 5] [--batch BATCH.json] [--micro-batch 8]

One process, one rank, torch threads = every core this process may use.
- Speed, on benchmark/step_time.py's job: 8 chat-formatted GSM8K prompts x 8 responses of 32
  random tokens. `Learner.learn` (GRPO: advantages, 8 micro-batches of 8 with exact accumulation,
  one optimizer step, the old log-probs taken from the loss's forward as for any single on-policy
  step) and the same with --packing (micro-batches of at most 4096 tokens), against the floor: the
  same DeepSpeed engine config running forward (logits at the response span only, as the learner
  does), a policy-gradient loss at the response tokens, backward and one step, over the same
  micro-batches. Medians of --repeats, interleaved, after one warm-up. With --batch, the responses
  bare_generate.py sampled (the training half of a step's floor), in micro-batches of --micro-batch.
- Memory, with --memory-model (SmolLM2-135M: a 49k vocabulary makes a [tokens, vocab] copy
  visible): `Learner.learn` (gradient checkpointing on, so the layers keep only their inputs) on
  one micro-batch of 4 responses of each length; the process's peak resident memory during that
  call (the kernel's high-water mark, reset before it, with freed memory returned to the system at
  once) over its size before, against one fp32 [4, length, vocab] tensor. Once with the output
  layer's logits read all at once (--logprob_chunk_tokens 0), once 256 tokens at a time.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
from functools import partial

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", str(29500 + random.Random().randrange(2000)))

import deepspeed  # noqa: E402
import torch  # noqa: E402
from grpo_job import LEARNING_RATE, MICRO_BATCH, NEW_TOKENS, PROMPTS, SAMPLES, prompt_ids  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from oat_cpgd.algorithms import logprobs_from_logits  # noqa: E402
from oat_cpgd.args import PPOArgs  # noqa: E402
from oat_cpgd.learners import Learner  # noqa: E402
from oat_cpgd.learners.batch import collate  # noqa: E402
from oat_cpgd.learners.deepspeed_config import param_groups, train_config  # noqa: E402
from oat_cpgd.learners.schedule import ScheduleSteps
from oat_cpgd.placement import Placement  # noqa: E402
from oat_cpgd.types import Trajectory  # noqa: E402

ONE_RANK = Placement.learners_alone(1, on_cuda=False)


def job_args(model: str, **flags) -> PPOArgs:
    values = dict(
        pretrain=model,
        critic_type="grpo",
        gpus=1,
        num_samples=SAMPLES,
        rollout_batch_size=PROMPTS,
        rollout_batch_size_per_device=PROMPTS,
        train_batch_size=PROMPTS * SAMPLES,
        train_batch_size_per_device=MICRO_BATCH,
        mini_train_batch_size_per_device=MICRO_BATCH,
        learning_rate=LEARNING_RATE,
        lr_scheduler="constant",
        lr_warmup_ratio=0.0,
        generate_max_length=NEW_TOKENS,
        seed=0,
    )
    args = PPOArgs(**(values | flags))
    args.resolve()
    return args


def job_trajectories(tokenizer, data: str, response_len: int, prompts: int, samples: int) -> list[Trajectory]:
    rng = random.Random(0)
    out = []
    for index, prompt in enumerate(prompt_ids(tokenizer, data, prompts)):
        for sample in range(samples):
            response = [rng.randrange(3, tokenizer.vocab_size) for _ in range(response_len)]
            reward = float(sample % 2)
            out.append(Trajectory(index, prompt, response, [-5.0] * response_len, reward, False))
    return out


def batch_trajectories(path: str) -> list[Trajectory]:
    """bare_generate.py's batch, a prompt's responses contiguous."""
    with open(path) as f:
        rows = json.load(f)["batch"]
    prompts: dict[tuple, int] = {}
    return [
        Trajectory(
            prompts.setdefault(tuple(row["prompt_ids"]), len(prompts)),
            row["prompt_ids"],
            row["response_ids"],
            row["logprobs"],
            row["reward"],
            False,
        )
        for row in rows
    ]


def bare_loop(args: PPOArgs, trajectories: list[Trajectory], tokenizer):
    """The floor: DeepSpeed forward, -A * ratio at the response tokens (token mean), backward, step."""
    model = AutoModelForCausalLM.from_pretrained(args.pretrain, dtype=torch.float32)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, 0.0),
        config=train_config(args, 1, args.learning_rate, on_cuda=False),
    )
    batch = collate(trajectories, tokenizer.pad_token_id, torch.device("cpu"))
    advantages = torch.tensor([t.reward - 0.5 for t in trajectories])
    parts = torch.arange(len(batch)).split(args.train_batch_size_per_device)

    def step():
        for part in parts:
            micro = batch.select(part)
            span = micro.response_span()
            keep = torch.arange(span.start, span.stop)
            logits = engine(input_ids=micro.input_ids, attention_mask=micro.attention_mask, logits_to_keep=keep).logits
            logp = logprobs_from_logits(logits, micro.labels[:, span])
            mask = micro.response_mask[:, span].bool()
            loss = -(advantages[part, None] * torch.exp(logp - logp.detach()))[mask].sum() / mask.sum()
            engine.backward(loss)
            engine.step()

    return step


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's resident memory (VmHWM) to its size now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--memory-model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", help="bare_generate.py's batch, in place of random response tokens")
    parser.add_argument("--micro-batch", type=int, default=MICRO_BATCH)
    options = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    result = {"threads": torch.get_num_threads()}

    tokenizer = AutoTokenizer.from_pretrained(options.model)
    if options.batch:
        trajectories = batch_trajectories(options.batch)
    else:
        trajectories = job_trajectories(tokenizer, options.data, NEW_TOKENS, PROMPTS, SAMPLES)
    result["tokens"] = sum(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)
    longest = max(len(t.response_ids) for t in trajectories)
    flags = dict(train_batch_size_per_device=options.micro_batch, mini_train_batch_size_per_device=options.micro_batch)
    flags |= dict(generate_max_length=max(longest, NEW_TOKENS))

    def learner_with(**more) -> Learner:
        return Learner(job_args(options.model, **flags, **more), ONE_RANK, 0, schedule_steps=ScheduleSteps(100, 100))

    learner = learner_with()
    packed = learner_with(packing=True, train_max_tokens_per_device=4096)
    bare = bare_loop(job_args(options.model, **flags), trajectories, tokenizer)
    runs = {
        "learner": partial(learner.learn, trajectories),
        "packed": partial(packed.learn, trajectories),
        "bare": bare,
    }
    times = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(options.repeats):  # interleaved: load from elsewhere hits all three alike
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    result["learn_time"] = times
    result["median"] = {name: statistics.median(values) for name, values in times.items()}
    del runs, learner, packed, bare  # memory_rows measures from what is left

    if options.memory_model:
        result["memory"] = memory_rows(options.memory_model, options.data)
    with open(options.out, "w") as f:
        json.dump(result, f, indent=1)


RESPONSES = 4
"""Responses per micro-batch in the memory rows: enough tokens that the logits outweigh the optimizer step."""


def memory_rows(model: str, data: str) -> list[dict]:
    """Peak resident memory of a `learn` over the process's size just before it, with the output
    layer's logits read all at once and --logprob_chunk_tokens 256 at a time.

    Every allocation of 128 kB or more is mapped on its own and returned to the system when freed
    (mallopt M_MMAP_THRESHOLD): otherwise the allocator keeps freed memory, and the high-water mark
    counts what was freed before the peak as if it were still in use.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 128 * 1024)
    rows, lengths = [], (256, 512, 1024, 2048)
    tokenizer = AutoTokenizer.from_pretrained(model)
    vocab = AutoConfig.from_pretrained(model).vocab_size
    flags = dict(num_samples=RESPONSES, rollout_batch_size=1, rollout_batch_size_per_device=1)
    flags |= dict(train_batch_size=RESPONSES, train_batch_size_per_device=RESPONSES)
    flags |= dict(mini_train_batch_size_per_device=RESPONSES, generate_max_length=max(lengths))
    # Checkpointed layers keep only their inputs, so what the loss keeps of the vocabulary shows.
    flags |= dict(gradient_checkpointing=True)
    for chunk_tokens in (0, 256):
        learner = Learner(
            job_args(model, logprob_chunk_tokens=chunk_tokens, **flags),
            ONE_RANK,
            0,
            schedule_steps=ScheduleSteps(100, 100),
        )
        learner.learn(job_trajectories(tokenizer, data, 16, 1, RESPONSES))  # optimizer states allocated
        for length in lengths:
            trajectories = job_trajectories(tokenizer, data, length, 1, RESPONSES)
            reset_peak_rss()
            before = memory_mb("VmRSS")
            learner.learn(trajectories)
            row = {
                "logprob_chunk_tokens": chunk_tokens,
                "responses": RESPONSES,
                "response_len": length,
                "tokens": sum(len(t.prompt_ids) + len(t.response_ids) for t in trajectories),
                "peak_growth_mb": memory_mb("VmHWM") - before,
                "vocab_copy_mb": RESPONSES * length * vocab * 4 / 2**20,  # one fp32 [responses, length, vocab] tensor
            }
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
        del learner
    return rows


if __name__ == "__main__":
    main()
