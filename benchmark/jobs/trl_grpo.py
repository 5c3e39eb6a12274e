"""TRL's GRPOTrainer on benchmark/step_time.py's job; run by the TRL virtual environment's Python.

    python benchmark/jobs/trl_grpo.py --model DIR --data GSM8K.jsonl --steps N --out RESULT.json

TRL's defaults, except what defines the job: 8 prompts x 8 samples per optimizer step
(per-device batch 8, 8 accumulation steps), 32 new tokens, lr 1e-3 constant, the share-of-7s
reward, and fp32 like oat_cpgd (TRL's default bf16 autocast is emulated on a CPU without bf16
units, ~15x slower here). Writes each step's wall time, the time spent generating and scoring, and the reward.
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
        self.ends, self.rewards = [time.perf_counter()], []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.rewards.append(logs["reward"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()

    dataset = load_dataset("json", data_files=options.data, split="train")
    dataset = dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["question"]}]})
    config = GRPOConfig(
        output_dir=os.path.join(os.path.dirname(options.out), "trl_output"),
        per_device_train_batch_size=job.MICRO_BATCH,
        gradient_accumulation_steps=job.PROMPTS * job.SAMPLES // job.MICRO_BATCH,
        num_generations=job.SAMPLES,
        max_completion_length=job.NEW_TOKENS,
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
        "gradient_checkpointing": config.gradient_checkpointing,
        "loss_type": config.loss_type,
        "beta": config.beta,
        "bf16": config.bf16,
    }
    with open(options.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
