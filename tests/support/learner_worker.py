"""Runs Learner scenarios on real DeepSpeed ranks, for tests/test_learner.py (not a test itself).

    python -m torch.distributed.run --nproc_per_node 2 --master_port PORT tests/support/learner_worker.py \\
        --model TINY_MODEL_DIR --out DIR [--scenarios grpo ppo ...] [--dump-state FILE.safetensors]

Every scenario builds a Learner, runs one `learn` on fixed trajectories (4 prompts x 4
responses of random tokens) and writes, from rank 0:
- DIR/NAME.json: metrics, rewards, each response's log-prob before and after the update
  (summed over its tokens, from the learner's own forward), and, where the scenario asks,
  the reference gradient norm of the first mini-batch computed by plain torch;
- DIR/NAME.safetensors: the weights a sync sends after the update (`Learner.weights()`);
- DIR/NAME_saved/: `save_pretrained` output, where the scenario asks; with LoRA also
  DIR/NAME_checkpoint/ (`save_checkpoint`), and in NAME.json the trained parameters' names and
  the responses' log-probs under plain torch with the synced (merged) weights.
`--dump-state` also writes the last scenario's synced state to FILE.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from oat_cpgd.algorithms import ALGORITHMS, Algorithm, group_advantages, kl_penalty, top_k_top_p_logprobs
from oat_cpgd.algorithms.registry import ppo_clip_options
from oat_cpgd.args import CPGDArgs, PPOArgs
from oat_cpgd.learners import Learner
from oat_cpgd.learners.forward import unwrapped
from oat_cpgd.learners.schedule import ScheduleSteps
from oat_cpgd.learners.weights import ModelWeights
from oat_cpgd.placement import Placement
from oat_cpgd.types import Trajectory

NUM_PROMPTS = 4
NUM_SAMPLES = 4
MAX_RESPONSE_LEN = 12
TEMPERATURE = 0.7


@dataclass
class Scenario:
    flags: dict[str, Any]
    group_rewards: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 1.0, 0.0),)
    """Rewards of each group's responses, cycled over the prompts."""
    reference_grad_norm: bool = False
    """Compute the first mini-batch's gradient norm with plain torch (one optimizer step; see `reference_grad_norm`)."""
    actor_logp_shift: float = 0.0
    """Added to the actor's log-probs: a stale behaviour policy, w = exp(-shift) on every token."""
    perturbed_reference: bool = False
    """--ref_pretrain is the model with noise added: the reference KL is not 0 at the first step."""
    save: bool = False
    check_loading: bool = False
    """Compare each model's weights, gathered right after start-up, with the checkpoint (`loaded_weights`)."""


ONE_STEP = {"train_batch_size": 16, "train_batch_size_per_device": 4}
TWO_STEPS = {"train_batch_size": 8, "train_batch_size_per_device": 4}
PACKED = {"packing": True, "train_max_tokens_per_device": 40}
CHUNKED = {"logprob_chunk_tokens": 5}
CPGD_THREE_EPOCHS = {"critic_type": "cpgd", "cpgd_weight": "clip_filter", "num_ppo_epochs": 3, **ONE_STEP}

SCENARIOS: dict[str, Scenario] = {
    # One optimizer step on-policy: every response's log-prob moves with its advantage's sign.
    # PPO: rewards of +-10 dwarf the untrained critic's values, so sign(A) = sign(R); ZeRO-3 critic.
    # The length penalties (at most -0.1 - 0.1 here) shape the rewards but keep their signs.
    "ppo": Scenario(
        {
            "critic_type": "ppo",
            "reward_scale": 10.0,
            "non_stop_penalty": -0.1,
            "overlong_buffer_len": 8,
            "overlong_penalty_factor": 0.2,
            "zero_stage": 3,
            **ONE_STEP,
        },
        group_rewards=((1.0, -1.0, 1.0, -1.0),),
        check_loading=True,
    ),
    "grpo": Scenario({"critic_type": "grpo", **ONE_STEP}, reference_grad_norm=True),
    "rloo": Scenario({"critic_type": "rloo", **ONE_STEP}),
    "gspo": Scenario({"critic_type": "gspo", **ONE_STEP}),
    "cispo": Scenario({"critic_type": "cispo", **ONE_STEP}),
    "gmpo": Scenario({"critic_type": "gmpo", **ONE_STEP}),
    # Whitened over the whole batch's tokens: the gradient equals plain torch's on the whole batch,
    # which per-rank whitening (each rank's groups differ) would not give.
    "reinforce_pp_baseline": Scenario(
        {"critic_type": "reinforce_pp_baseline", **ONE_STEP},
        group_rewards=((1.0, 0.0, 0.0, 0.0), (1.0, 1.0, 0.0, 1.0), (0.2, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0)),
        reference_grad_norm=True,
    ),
    # Registered at run time (below): the learner trains it with no edit of its own.
    "registered_at_run_time": Scenario({"critic_type": "reinforce", **ONE_STEP}),
    # A stale behaviour policy, w = e^ln4 = 4 on every token: tis truncates it to C = 2, doubling
    # the gradient; mis drops every token.
    "grpo_stale_tis": Scenario(
        {"critic_type": "grpo", "is_correction": "tis", "tis_c": 2.0, **ONE_STEP},
        reference_grad_norm=True,
        actor_logp_shift=-math.log(4),
    ),
    "grpo_stale_mis": Scenario(
        {"critic_type": "grpo", "is_correction": "mis", "tis_c": 2.0, **ONE_STEP}, actor_logp_shift=-math.log(4)
    ),
    # Every group all correct: without shaping every advantage is 0; the KL to a different reference
    # shapes the rewards before the group advantage.
    "grpo_kl_shaping": Scenario(
        {"critic_type": "grpo", "kl_penalty_coef": 0.5, **ONE_STEP},
        group_rewards=((1.0, 1.0, 1.0, 1.0),),
        perturbed_reference=True,
    ),
    # A NaN reward in rank 0's first mini-batch: that optimizer step is skipped on both ranks, the second applies.
    "grpo_nan_reward": Scenario(
        {"critic_type": "grpo", **TWO_STEPS},
        group_rewards=((math.nan, 0.0, 1.0, 0.0), (1.0, 0.0, 1.0, 0.0), (1.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 0.0)),
    ),
    # Every reward NaN under ZeRO-3: two skipped steps in a row exceed --max_skipped_steps 1.
    "grpo_nan_abort": Scenario(
        {"critic_type": "grpo", "zero_stage": 3, "max_skipped_steps": 1, **TWO_STEPS},
        group_rewards=((math.nan, 0.0, 1.0, 0.0),),
    ),
    # --top_p 0.8 (the actor's log-probs here are full-vocabulary ones): the weights are computed
    # against the learner's top-p renormalised log-probs, so their mean is plain torch's ratio's.
    "grpo_top_p": Scenario({"critic_type": "grpo", "top_p": 0.8, "is_correction": "none", **ONE_STEP}),
    # The reference-KL loss (beta) against a different reference changes the "grpo" gradient.
    "grpo_ref_kl_loss": Scenario({"critic_type": "grpo", "beta": 1.0, **ONE_STEP}, perturbed_reference=True),
    "drgrpo": Scenario({"critic_type": "drgrpo", **ONE_STEP}),
    "cpgd": Scenario({"critic_type": "cpgd", "cpgd_weight": "clip_filter", **ONE_STEP}),
    # The same batch for 3 epochs: epochs 2 and 3 start off-policy, so the drift grows; a strong
    # drift coefficient (alpha) pulls the policy back towards the proximal one and keeps it smaller.
    "cpgd_three_epochs": Scenario({**CPGD_THREE_EPOCHS, "policy_drift_coeff": 0.0}),
    "cpgd_three_epochs_strong_drift": Scenario({**CPGD_THREE_EPOCHS, "policy_drift_coeff": 5.0}),
    # Same learn as "grpo", accumulated over 4 micro-batches per rank instead of 1.
    "grpo_micro1": Scenario(
        {"critic_type": "grpo", **ONE_STEP, "train_batch_size_per_device": 1}, reference_grad_norm=True
    ),
    # Same learn as "grpo", in micro-batches of at most 40 tokens (2-4 responses; the ranks make
    # different counts, so one gets stand-ins).
    "grpo_packed": Scenario({"critic_type": "grpo", **ONE_STEP, **PACKED}),
    "grpo_zero3_packed": Scenario({"critic_type": "grpo", "zero_stage": 3, **ONE_STEP, **PACKED}),
    # Same learn as "grpo", the output layer run on 5 response tokens at a time (and recomputed in backward).
    "grpo_chunked": Scenario({"critic_type": "grpo", **ONE_STEP, **CHUNKED}),
    # Under ZeRO-3, where each chunk gathers the output layer from both ranks: the ranks' micro-batches
    # hold different response token counts, so one runs empty chunks to match the other's count
    # (seen once by hand: 5 vs 7 chunks unpacked, 3 vs 4 packed).
    "grpo_zero3_chunked": Scenario({"critic_type": "grpo", "zero_stage": 3, **ONE_STEP, **CHUNKED}),
    "grpo_zero3_packed_chunked": Scenario({"critic_type": "grpo", "zero_stage": 3, **ONE_STEP, **PACKED, **CHUNKED}),
    # Same learn as "grpo" under ZeRO-3; its saved checkpoint is checked too.
    "grpo_zero3": Scenario({"critic_type": "grpo", "zero_stage": 3, **ONE_STEP}, save=True),
    # LoRA (rank 4, all linear layers) under ZeRO-3, which gathers base weights and adapters to
    # merge them. B starts at 0 and only it moves in the first step: a higher LR than full training's.
    "grpo_lora_zero3": Scenario(
        {"critic_type": "grpo", "zero_stage": 3, "lora_rank": 4, "lora_alpha": 8, "learning_rate": 5e-3, **ONE_STEP},
        save=True,
        check_loading=True,
    ),
    # Two shuffled mini-batches (token-mean, critic), micro-batches of 4 vs 1.
    "ppo_two_steps": Scenario({"critic_type": "ppo", **TWO_STEPS}),
    "ppo_two_steps_micro1": Scenario({"critic_type": "ppo", **TWO_STEPS, "train_batch_size_per_device": 1}),
    "ppo_two_steps_packed": Scenario({"critic_type": "ppo", **TWO_STEPS, **PACKED}),
    "ppo_two_steps_chunked": Scenario({"critic_type": "ppo", **TWO_STEPS, **CHUNKED}),
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
        check_loading=True,
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
        "mini_train_batch_size_per_device": 4,
        "learning_rate": 1e-3,
        "critic_learning_rate": 1e-3,
        "lr_scheduler": "constant",  # one optimizer step at the full LR (oat's default would warm up from 0)
        "lr_warmup_ratio": 0.0,
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


@torch.no_grad()
def reference_kls(model_dir: str, reference_dir: Path, trajectories: list[Trajectory]) -> list[list[float]]:
    """Plain torch, per response token: the k3 KL estimate of the policy's log-prob to the reference's."""
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32)
    return [kl_penalty(token_logprobs(policy, t), token_logprobs(reference, t)).tolist() for t in trajectories]


@torch.no_grad()
def top_p_weights(model: torch.nn.Module, trajectories: list[Trajectory], top_p: float) -> list[list[float]]:
    """Plain torch, per response token: exp(top-p renormalised logp - actor logp)."""
    weights = []
    for trajectory in trajectories:
        ids = torch.tensor([trajectory.prompt_ids + trajectory.response_ids])
        logits = model(input_ids=ids).logits[0, len(trajectory.prompt_ids) - 1 : -1].float() / TEMPERATURE
        kept = top_k_top_p_logprobs(logits, torch.tensor(trajectory.response_ids), top_p=top_p)
        weights.append(torch.exp(kept - torch.tensor(trajectory.actor_logprobs)).tolist())
    return weights


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
            response = [rng.randrange(3, vocab_size) for _ in range(rng.randint(2, MAX_RESPONSE_LEN))]
            # The longest responses drawn stand for ones cut at the length limit.
            truncated = len(response) == MAX_RESPONSE_LEN
            trajectories.append(Trajectory(prompt_index, prompt, response, [], rewards[sample], truncated))
    with torch.no_grad():
        for trajectory in trajectories:
            trajectory.actor_logprobs = token_logprobs(model, trajectory).tolist()
    return trajectories


def reference_grad_norm(model: torch.nn.Module, trajectories: list[Trajectory], scenario: Scenario) -> float:
    """The first (on-policy) mini-batch = the whole batch, in plain torch: -A * ratio * w per token,
    GRPO's seq-mean-token-mean, or for REINFORCE++-baseline the group-centred rewards whitened over
    all the batch's tokens (population std) and token-mean. w = min(e^-shift, tis_c)."""
    rewards = torch.tensor([t.reward for t in trajectories])
    lengths = torch.tensor([len(t.response_ids) for t in trajectories])
    weight = min(math.exp(-scenario.actor_logp_shift), scenario.flags.get("tis_c", 2.0))
    model.zero_grad()
    if scenario.flags["critic_type"] == "reinforce_pp_baseline":
        centered = group_advantages(rewards, NUM_SAMPLES, weight="unit")
        tokens = centered.repeat_interleave(lengths)
        advantages = (centered - tokens.mean()) / (tokens.var(unbiased=False) + 1e-8).sqrt()
        loss = (
            sum(
                (-advantage * weight * torch.exp(logp - logp.detach())).sum()
                for advantage, logp in zip(advantages, (token_logprobs(model, t) for t in trajectories), strict=True)
            )
            / lengths.sum()
        )
    else:
        advantages = group_advantages(rewards, NUM_SAMPLES, weight="std")
        losses = []
        for trajectory, advantage in zip(trajectories, advantages, strict=True):
            logp = token_logprobs(model, trajectory)
            losses.append((-advantage * weight * torch.exp(logp - logp.detach())).mean())
        loss = torch.stack(losses).mean()
    loss.backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    model.zero_grad()
    return float(norm)


def perturbed_copy(model: torch.nn.Module, path: Path, rank: int) -> Path:
    """The model with seeded noise on every weight, saved (with the tokenizer's files) by rank 0."""
    if rank == 0 and not path.exists():
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        model.save_pretrained(path)
    dist.barrier()
    return path


def loaded_weights(learner: Learner, model_dir: str) -> dict[str, dict[str, Any]]:
    """Collective: each model's weights (policy, critic, reference), gathered right after start-up, against
    the checkpoint's cast to the training dtype: how many it holds, the names that differ, and those
    it lacks (the critic's new value head), with their largest absolute value."""
    checkpoint = safetensors.torch.load_file(Path(model_dir) / "model.safetensors")
    models = {"policy": learner.policy.module}
    if learner.critic is not None:
        models["critic"] = learner.critic.module
    if learner.reference_lm is not None:
        models["reference"] = unwrapped(learner.reference_lm.model)
    report = {}
    for role, model in models.items():
        compared, differing, new = 0, [], {}
        for name, tensor in ModelWeights(model, zero3=learner.args.zero_stage == 3, tied_head=False):
            if name not in checkpoint:
                new[name] = float(tensor.abs().max())
                continue
            compared += 1
            if not torch.equal(tensor.cpu(), checkpoint[name].to(tensor.dtype)):
                differing.append(name)
        report[role] = {"compared": compared, "differing": differing, "new": new}
    return report


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
    for trajectory in trajectories:
        trajectory.actor_logprobs = [logp + scenario.actor_logp_shift for logp in trajectory.actor_logprobs]
    result: dict[str, Any] = {
        "rewards": [t.reward for t in trajectories],
        "response_lengths": [len(t.response_ids) for t in trajectories],
        "truncated": [t.truncated for t in trajectories],
        "sequence_lengths": [len(t.prompt_ids) + len(t.response_ids) for t in trajectories],
    }
    if scenario.reference_grad_norm:
        result["reference_grad_norm"] = reference_grad_norm(plain_model, trajectories, scenario)
    if "top_p" in scenario.flags:
        result["top_p_weights"] = top_p_weights(plain_model, trajectories, scenario.flags["top_p"])
    flags = dict(scenario.flags)
    if scenario.perturbed_reference:
        flags["ref_pretrain"] = str(perturbed_copy(plain_model, out / "perturbed_reference", rank))
        result["reference_kls"] = reference_kls(model_dir, Path(flags["ref_pretrain"]), trajectories)
    del plain_model

    args = make_args(model_dir, world_size, flags)
    learner = Learner(
        args,
        Placement.learners_alone(world_size, torch.cuda.is_available()),
        rank,
        schedule_steps=ScheduleSteps(10, 10),
    )
    if scenario.check_loading:
        result["loaded"] = loaded_weights(learner, model_dir)
    per_rank = len(trajectories) // world_size
    shard = trajectories[rank * per_rank : (rank + 1) * per_rank]

    result["logp_before"] = sequence_logprobs(learner, shard)
    try:
        result["metrics"] = learner.learn(shard)
    except FloatingPointError as error:  # too many non-finite updates: every rank stops alike
        result["error"] = str(error)
    result["logp_after"] = sequence_logprobs(learner, shard)
    # Every rank iterates (ZeRO-3 gathers layer by layer); copies, as the gathered memory is released.
    state = {name: tensor.to("cpu", copy=True) for name, tensor in learner.weights()}
    if scenario.save:
        learner.save_pretrained(out / f"{name}_saved")
    if args.lora_rank > 0:
        learner.save_checkpoint(out / f"{name}_checkpoint")
        result["trained"] = [name for name, param in learner.policy.module.named_parameters() if param.requires_grad]
        if rank == 0:
            merged = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            merged.load_state_dict(state)
            with torch.no_grad():
                result["merged_logp_after"] = [float(token_logprobs(merged, t).sum()) for t in trajectories]
    if rank == 0:
        safetensors.torch.save_file(state, out / f"{name}.safetensors")
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))  # NaN metrics as NaN
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
    # A new algorithm is one registry entry: REINFORCE with a group-mean baseline, token-mean.
    ALGORITHMS["reinforce"] = Algorithm(
        policy_loss="ppo_clip", agg_mode="token-mean", advantage_kwargs={"weight": "unit"}, loss_kwargs=ppo_clip_options
    )
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
