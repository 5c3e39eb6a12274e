"""TRL's GRPOTrainer on benchmark/step_time.py's job; run by the TRL virtual environment's Python.

    python benchmark/jobs/trl_grpo.py --model DIR --data GSM8K.jsonl --steps N --out RESULT.json
        [--micro-batch 8] [--gradient-checkpointing on|off] [--new-tokens 32]

TRL's defaults, except what defines the job: 8 prompts x 8 samples per optimizer step (the
micro-batch's accumulation steps make up 64), the new tokens, lr 1e-3 constant, the share-of-7s
reward, and fp32 like oat_cpgd (TRL's default bf16 autocast is emulated on a CPU without bf16
units, ~15x slower here). The flags are the settings benchmark/step_time.py searches for TRL's
best: per-device batch (TRL's default 8) and gradient checkpointing (TRL's default on); generation is
transformers' (TRL's vLLM mode cannot run on a CPU: benchmark/step_time.py says why). Writes each
step's wall time, the time spent generating and scoring, the reward and the completions' mean length.
"""

import argparse
import json
import os
import time

import grpo_job as job  # this script's folder is on sys.path
import torch
from datasets import load_dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer


def sevens(completions, **kwargs):
    """The share of the completion's characters that are '7' (benchmark/jobs/sevens.py's oracle)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [text.count("7") / max(len(text), 1) for text in texts]


class TimedGRPOTrainer(GRPOTrainer):
    """Times generation + scoring (TRL computes both in `_generate_and_score_completions`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generate_times: list[float] = []

    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        self.generate_times.append(time.perf_counter() - start)
        return out


class StepClock(TrainerCallback):
    def __init__(self):
        self.ends, self.rewards, self.lengths = [time.perf_counter()], [], []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.rewards.append(logs["reward"])
            self.lengths.append(logs.get("completions/mean_length"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--micro-batch", type=int, default=job.MICRO_BATCH)
    parser.add_argument("--gradient-checkpointing", choices=("on", "off"), default="on")
    parser.add_argument("--new-tokens", type=int, default=job.NEW_TOKENS)
    options = parser.parse_args()
    responses = job.PROMPTS * job.SAMPLES
    if responses % options.micro_batch:
        parser.error(f"--micro-batch {options.micro_batch} does not divide the step's {responses} responses")

    dataset = load_dataset("json", data_files=options.data, split="train")
    dataset = dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["question"]}]})
    config = GRPOConfig(
        output_dir=os.path.join(os.path.dirname(options.out), "trl_output"),
        per_device_train_batch_size=options.micro_batch,
        gradient_accumulation_steps=responses // options.micro_batch,
        gradient_checkpointing=options.gradient_checkpointing == "on",
        num_generations=job.SAMPLES,
        max_completion_length=options.new_tokens,
        temperature=job.TEMPERATURE,
        learning_rate=job.LEARNING_RATE,
        lr_scheduler_type="constant",
        max_steps=options.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=options.seed,
        dataloader_num_workers=0,
    )
    clock = StepClock()
    trainer = TimedGRPOTrainer(
        model=options.model, reward_funcs=sevens, args=config, train_dataset=dataset, callbacks=[clock]
    )
    trainer.train()
    step_times = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    result = {
        "threads": torch.get_num_threads(),
        "step_time": step_times,
        "generate_time": trainer.generate_times,
        "reward": clock.rewards,
        "length": clock.lengths,
        "micro_batch": options.micro_batch,
        "gradient_checkpointing": config.gradient_checkpointing,
        "loss_type": config.loss_type,
        "beta": config.beta,
        "bf16": config.bf16,
    }
    with open(options.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
