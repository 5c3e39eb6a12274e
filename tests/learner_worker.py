"""Runs Learner scenarios on real DeepSpeed ranks, for tests/test_learner.py (not a test itself).

    python -m torch.distributed.run --nproc_per_node 2 --master_port PORT tests/learner_worker.py \\
        --model TINY_MODEL_DIR --out DIR [--scenarios grpo ppo ...] [--dump-state FILE.safetensors]

Every scenario builds a Learner, runs one `learn` on fixed trajectories (4 prompts x 4
responses of random tokens) and writes, from rank 0:
- DIR/NAME.json: metrics, rewards, each response's log-prob before and after the update
  (summed over its tokens, from the learner's own forward), and, where the scenario asks,
  the reference gradient norm of the first mini-batch computed by plain torch;
- DIR/NAME.safetensors: the weights a sync sends after the update (`Learner.weights()`);
- DIR/NAME_saved/: `save_pretrained` output, where the scenario asks.
`--dump-state` also writes the last scenario's synced state to FILE.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from oat_cpgd.algorithms import group_advantages
from oat_cpgd.args import CPGDArgs, PPOArgs
from oat_cpgd.learners import Learner
from oat_cpgd.types import Trajectory

NUM_PROMPTS = 4
NUM_SAMPLES = 4
TEMPERATURE = 0.7


@dataclass
class Scenario:
    flags: dict[str, Any]
    group_rewards: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 1.0, 0.0),)
    """Rewards of each group's responses, cycled over the prompts."""
    reference_grad_norm: bool = False
    """Compute the first mini-batch's gradient norm with plain torch (GRPO, one optimizer step)."""
    save: bool = False


ONE_STEP = {"train_batch_size": 16, "train_batch_size_per_device": 4}
TWO_STEPS = {"train_batch_size": 8, "train_batch_size_per_device": 4}

SCENARIOS: dict[str, Scenario] = {
    # One optimizer step on-policy: every response's log-prob moves with its advantage's sign.
    # PPO: rewards of +-10 dwarf the untrained critic's values, so sign(A) = sign(R); ZeRO-3 critic.
    "ppo": Scenario(
        {"critic_type": "ppo", "reward_scale": 10.0, "zero_stage": 3, **ONE_STEP},
        group_rewards=((1.0, -1.0, 1.0, -1.0),),
    ),
    "grpo": Scenario({"critic_type": "grpo", **ONE_STEP}, reference_grad_norm=True),
    "drgrpo": Scenario({"critic_type": "drgrpo", **ONE_STEP}),
    "cpgd": Scenario({"critic_type": "cpgd", "cpgd_weight": "clip_filter", **ONE_STEP}),
    # Same learn as "grpo", accumulated over 4 micro-batches per rank instead of 1.
    "grpo_micro1": Scenario(
        {"critic_type": "grpo", **ONE_STEP, "train_batch_size_per_device": 1}, reference_grad_norm=True
    ),
    # Same learn as "grpo" under ZeRO-3; its saved checkpoint is checked too.
    "grpo_zero3": Scenario({"critic_type": "grpo", "zero_stage": 3, **ONE_STEP}, save=True),
    # Two shuffled mini-batches (token-mean, critic), micro-batches of 4 vs 1.
    "ppo_two_steps": Scenario({"critic_type": "ppo", **TWO_STEPS}),
    "ppo_two_steps_micro1": Scenario({"critic_type": "ppo", **TWO_STEPS, "train_batch_size_per_device": 1}),
    # The other features, in bf16: they run and report finite metrics. Rank 0's groups are all
    # correct and all wrong, so clip_filter's weight differs between rank 0, rank 1 and the whole batch.
    "cpgd_zero3_bf16": Scenario(
        {
            "critic_type": "cpgd",
            "cpgd_weight": "clip_filter",
            "zero_stage": 3,
            "bf16": True,
            "gradient_checkpointing": True,
            "beta": 0.1,
            "ref_offload": True,
            "adam_offload": True,
            "param_offload": True,
            "num_ppo_epochs": 2,
            "lr_scheduler": "cosine_with_min_lr",
            "lr_warmup_ratio": 0.5,
            "mini_train_batch_size_per_device": 3,
            **TWO_STEPS,
            "train_batch_size_per_device": 2,
        },
        group_rewards=((1.0, 1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0), (1.0, 0.0, 1.0, 0.0), (0.0, 1.0, 0.0, 0.0)),
    ),
    "ppo_zero2_bf16": Scenario(
        {
            "critic_type": "ppo",
            "bf16": True,
            "kl_penalty_coef": 0.1,
            "ref_offload": True,
            "whiten_adv": True,
            "dual_clip": 3.0,
            "adam_offload": True,
            "num_ppo_epochs": 2,
            "lr_scheduler": "linear",
            "lr_warmup_ratio": 0.2,
            "gamma": 0.99,
            "lam": 0.95,
            **TWO_STEPS,
            "train_batch_size_per_device": 2,
        }
    ),
}


def make_args(model: str, world_size: int, flags: dict[str, Any]) -> PPOArgs:
    base = {
        "pretrain": model,
        "gpus": world_size,
        "num_samples": NUM_SAMPLES,
        "rollout_batch_size": NUM_PROMPTS,
        "rollout_batch_size_per_device": NUM_PROMPTS // world_size,
        "pi_buffer_maxlen_per_device": NUM_PROMPTS * NUM_SAMPLES,
        "mini_train_batch_size_per_device": 4,
        "learning_rate": 1e-3,
        "critic_learning_rate": 1e-3,
        "temperature": TEMPERATURE,
        "prompt_max_length": 16,
        "generate_max_length": 16,
        "seed": 0,
    }
    args_cls = CPGDArgs if flags["critic_type"] == "cpgd" else PPOArgs
    args = args_cls(**(base | flags))
    args.resolve()
    return args


def token_logprobs(model: torch.nn.Module, trajectory: Trajectory) -> torch.Tensor:
    """Plain torch, one unpadded sequence: the response tokens' log-probs at TEMPERATURE."""
    ids = torch.tensor([trajectory.prompt_ids + trajectory.response_ids])
    logits = model(input_ids=ids).logits[0, :-1].float() / TEMPERATURE
    logp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    return logp[len(trajectory.prompt_ids) - 1 :]


def make_trajectories(
    model: torch.nn.Module, vocab_size: int, group_rewards: tuple[tuple[float, ...], ...]
) -> list[Trajectory]:
    """Random prompts and responses of varied lengths; actor log-probs from plain torch."""
    rng = random.Random(0)
    trajectories = []
    for prompt_index in range(NUM_PROMPTS):
        prompt = [rng.randrange(3, vocab_size) for _ in range(rng.randint(3, 8))]
        rewards = group_rewards[prompt_index % len(group_rewards)]
        for sample in range(NUM_SAMPLES):
            response = [rng.randrange(3, vocab_size) for _ in range(rng.randint(2, 12))]
            trajectories.append(Trajectory(prompt_index, prompt, response, [], rewards[sample], truncated=False))
    with torch.no_grad():
        for trajectory in trajectories:
            trajectory.actor_logprobs = token_logprobs(model, trajectory).tolist()
    return trajectories


def reference_grad_norm(model: torch.nn.Module, trajectories: list[Trajectory]) -> float:
    """GRPO's first (on-policy) mini-batch = the whole batch: seq-mean-token-mean of -A * ratio."""
    rewards = torch.tensor([t.reward for t in trajectories])
    advantages = group_advantages(rewards, NUM_SAMPLES, mode="grpo")
    model.zero_grad()
    losses = []
    for trajectory, advantage in zip(trajectories, advantages, strict=True):
        logp = token_logprobs(model, trajectory)
        losses.append((-advantage * torch.exp(logp - logp.detach())).mean())
    torch.stack(losses).mean().backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    model.zero_grad()
    return float(norm)


def sequence_logprobs(learner: Learner, shard: list[Trajectory]) -> list[float]:
    """Every rank's responses' log-probs (summed over tokens) under the learner's policy, in rank order."""
    mine = [float(logp.sum()) for logp in learner.response_logprobs(shard)]
    gathered: list[list[float]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, mine)
    return [logp for part in gathered for logp in part]


def run_scenario(
    name: str, scenario: Scenario, model_dir: str, out: Path, rank: int, world_size: int
) -> dict[str, torch.Tensor] | None:
    """Runs one scenario and writes its results; returns the synced state (rank 0)."""
    plain_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trajectories = make_trajectories(plain_model, plain_model.config.vocab_size, scenario.group_rewards)
    result: dict[str, Any] = {
        "rewards": [t.reward for t in trajectories],
        "response_lengths": [len(t.response_ids) for t in trajectories],
    }
    if scenario.reference_grad_norm:
        result["reference_grad_norm"] = reference_grad_norm(plain_model, trajectories)
    del plain_model

    args = make_args(model_dir, world_size, scenario.flags)
    learner = Learner(args, rank, world_size, total_optimizer_steps=10)
    per_rank = len(trajectories) // world_size
    shard = trajectories[rank * per_rank : (rank + 1) * per_rank]

    result["logp_before"] = sequence_logprobs(learner, shard)
    result["metrics"] = learner.learn(shard)
    result["logp_after"] = sequence_logprobs(learner, shard)
    # Every rank iterates (ZeRO-3 gathers layer by layer); copies, as the gathered memory is released.
    state = {name: tensor.to("cpu", copy=True) for name, tensor in learner.weights()}
    if scenario.save:
        learner.save_pretrained(out / f"{name}_saved")
    if rank == 0:
        safetensors.torch.save_file(state, out / f"{name}.safetensors")
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    del learner
    gc.collect()
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="tiny model folder (Hugging Face format)")
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--dump-state", type=Path, help="also write the last scenario's synced state here")
    cli = parser.parse_args()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cli.out.mkdir(parents=True, exist_ok=True)
    for name in cli.scenarios:
        state = run_scenario(name, SCENARIOS[name], cli.model, cli.out, rank, world_size)
        if rank == 0:
            print(f"scenario {name}: done", flush=True)
    if cli.dump_state and rank == 0:
        safetensors.torch.save_file(state, cli.dump_state)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
