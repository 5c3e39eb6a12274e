"""The DeepSpeed learner: trains any algorithm of the registry (oat_cpgd.algorithms.registry; docs/ALGORITHMS.md).

One `Learner` runs on each learner rank. `learn`, `connect_actors`, `sync_weights`, `probe_logprobs` and
the saving and loading methods are collectives: every rank calls them together, `learn` with its own
shard of the rollout (whole groups, the same number of responses on every rank). `response_logprobs`
is a probe for the tests and scripts/gpu_check.py, not used by the loop.

Per-token tensors are aligned with the labels `input_ids[:, 1:]`: position t holds what
belongs to predicting token t + 1 (its log-prob, value, advantage, response mask).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import deepspeed
import torch
from deepspeed import DeepSpeedEngine
from deepspeed.accelerator import get_accelerator
from torch import Tensor
from transformers import AutoTokenizer

from oat_cpgd.algorithms import (
    LOSS,
    MAX,
    TOKEN_MEAN,
    aggregate,
    batch_mean_var,
    declared_stats,
    entropy_from_logits,
    explained_variance,
    get_algorithm,
    importance_weights,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    shaped_rewards,
    top_k_top_p_logprobs,
    value_loss,
)
from oat_cpgd.args import PPOArgs
from oat_cpgd.console import send_role_output_to_log
from oat_cpgd.learners import engines, saving
from oat_cpgd.learners.batch import Batch, accumulation_weights, collate, micro_batches
from oat_cpgd.learners.collectives import all_gather_cat, all_reduce_max, all_reduce_sum, mean_over_ranks
from oat_cpgd.learners.deepspeed_config import train_config
from oat_cpgd.learners.forward import (
    CausalLM,
    TokenRead,
    has_dropout,
    label_outputs,
    logits_are_the_output_layer,
    read_response_tokens,
    takes_logits_to_keep,
)
from oat_cpgd.learners.schedule import ScheduleSteps
from oat_cpgd.learners.weights import ModelWeights
from oat_cpgd.oracles import CORRECT_REWARD
from oat_cpgd.types import Trajectory

if TYPE_CHECKING:
    from vllm.distributed.weight_transfer.base import TrainerWeightTransferEngine, VLLMWeightSyncClient

    from oat_cpgd.placement import Placement

logger = logging.getLogger(__name__)


def _logprob_and_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """[..., 0] the labels' log-probs, [..., 1] the entropy (a metric: no gradient)."""
    logp = logprobs_from_logits(logits, labels)
    with torch.no_grad():
        entropy = entropy_from_logits(logits)
    return torch.stack([logp, entropy], dim=-1)


class Learner:
    """Policy (and for PPO a critic) trained with DeepSpeed, plus an optional frozen reference model."""

    def __init__(self, args: PPOArgs, placement: Placement, rank: int, schedule_steps: ScheduleSteps) -> None:
        """Learner `rank` of `placement.learner_ranks`; its LR schedules span `schedule_steps` optimizer
        steps (`oat_cpgd.learners.schedule.schedule_steps`)."""
        send_role_output_to_log()  # DeepSpeed's, torch's and transformers' output to the rank's log (in a run)
        world_size = placement.learner_ranks
        self.args, self.placement, self.rank, self.world_size = args, placement, rank, world_size
        self.algorithm = get_algorithm(args.critic_type)
        engines.set_distributed_env(rank, world_size)
        deepspeed.init_distributed()
        accelerator = get_accelerator()
        accelerator.set_device(int(os.environ["LOCAL_RANK"]))
        self.device = torch.device(accelerator.current_device_name())
        torch.manual_seed(args.seed)
        self.shuffle_generator = torch.Generator().manual_seed(args.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)

        policy_config = train_config(args, world_size, args.learning_rate, placement.on_cuda)
        policy_model = engines.load_language_model(args.pretrain, args, policy_config)
        keeps_logits = takes_logits_to_keep(policy_model)  # (a LoRA wrapper passes the keyword on)
        # Dropout makes a training forward differ from the no-gradient one the old log-probs come from.
        self.dropout_free = not has_dropout(policy_model) and args.lora_dropout == 0
        if args.lora_rank > 0:
            from oat_cpgd.learners.lora import add_lora  # imports peft

            policy_model = add_lora(policy_model, args)
        self.policy = engines.train_engine(policy_model, args, policy_config, schedule_steps.policy)
        self.policy_lm = CausalLM(self.policy, keeps_logits, logits_are_the_output_layer(self.policy, self.device))
        self.critic: DeepSpeedEngine | None = None
        if self.algorithm.needs_critic:
            critic_config = train_config(args, world_size, args.critic_learning_rate, placement.on_cuda)
            critic_model = engines.load_critic(args, critic_config)
            self.critic = engines.train_engine(critic_model, args, critic_config, schedule_steps.critic)
        self.reference_lm: CausalLM | None = None
        if args.needs_reference:
            reference = engines.load_reference(args, self.device)
            with engines.reference_on_device(reference, args, self.device):  # (off the device with --ref_offload)
                self.reference_lm = CausalLM.of(reference, self.device)

        self.weight_transfer: TrainerWeightTransferEngine | None = None  # set by connect_actors
        self.skipped_in_a_row = 0  # optimizer steps skipped for a non-finite gradient, consecutively

        # seq-mean-token-sum-norm divides by the generation budget, the same for every micro-batch.
        self.max_len = args.generate_max_length
        policy_loss = self.algorithm.loss()
        self.policy_loss = partial(
            policy_loss,
            clip_low=args.clip_low,
            clip_high=args.clip_high,
            agg_mode=args.agg_mode,
            max_len=self.max_len,
            **self.algorithm.loss_options(args),
        )
        # How each stat is reduced over micro-batches and ranks: as the function that computes it declares.
        self.stat_reductions = {
            **declared_stats(policy_loss),
            **declared_stats(importance_weights),
            **declared_stats(value_loss),
            "entropy": TOKEN_MEAN,
            "ref_kl": TOKEN_MEAN,
        }
        # Every change training makes to the oracle's rewards, in one function: the actors report them unshaped.
        self.shaped_rewards = partial(
            shaped_rewards,
            max_len=args.generate_max_length,
            non_stop_penalty=args.non_stop_penalty,
            overlong_buffer_len=args.overlong_buffer_len,
            overlong_penalty_factor=args.overlong_penalty_factor,
            reward_scale=args.reward_scale,
            kl_coef=args.kl_penalty_coef,
            per_token=self.algorithm.needs_critic,  # GAE's rewards are per token
        )

    # ------------------------------------------------------------------ forward passes

    def _read(self, lm: CausalLM, batch: Batch, read: TokenRead) -> Tensor:
        """`read` at the response tokens of the sampling distribution (see `read_response_tokens`)."""
        args = self.args
        chunk_tokens = args.logprob_chunk_tokens
        return read_response_tokens(
            lm, batch, read, temperature=args.temperature, chunk_tokens=chunk_tokens, reduce_max=all_reduce_max
        )

    @torch.no_grad()
    def _logprobs(self, lm: CausalLM, batch: Batch) -> Tensor:
        """No-gradient log-probs (old, reference, `response_logprobs`) at every label position (0 off the responses)."""
        return self._read(lm, batch, logprobs_from_logits)

    @torch.no_grad()
    def _full_and_sampling_logprobs(self, batch: Batch) -> Tensor:
        """From one forward: [..., 0] the policy's log-probs (full vocabulary), [..., 1] those under the
        distribution vLLM samples from and reports: restricted to --top_k / --top_p and renormalised."""
        top_k, top_p = self.args.top_k, self.args.top_p

        def both(logits: Tensor, labels: Tensor) -> Tensor:
            sampling = top_k_top_p_logprobs(logits, labels, top_k=top_k, top_p=top_p)
            return torch.stack([logprobs_from_logits(logits, labels), sampling], dim=-1)

        return self._read(self.policy_lm, batch, both)

    def _values(self, batch: Batch) -> Tensor:
        return label_outputs(self.critic, batch)[..., 0].float()

    def _micro_batches(self, batch: Batch, indices: Tensor, rows: int) -> list[tuple[Tensor, Batch]]:
        """`rows` responses at a time, or with --packing by --train_max_tokens_per_device; every rank as many."""
        max_tokens = self.args.train_max_tokens_per_device if self.args.packing else None
        return micro_batches(batch, indices, rows=rows, max_tokens=max_tokens, reduce_max=all_reduce_max)

    @torch.no_grad()
    def _per_token(self, batch: Batch, compute: Callable[[Batch], Tensor]) -> Tensor:
        """`compute` over micro-batches of --mini_train_batch_size_per_device (or --packing's), gathered
        into [N, T - 1, ...]."""
        out = None
        everyone = torch.arange(len(batch), device=self.device)
        for indices, micro_batch in self._micro_batches(batch, everyone, self.args.mini_train_batch_size_per_device):
            values = compute(micro_batch)
            if out is None:  # [N, T - 1] plus whatever per-token shape `compute` gives
                out = values.new_zeros((*batch.response_mask.shape, *values.shape[2:]))
            out[indices, : micro_batch.response_mask.shape[1]] = values[: len(indices)]
        return out

    @torch.no_grad()
    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        """Collective (a ZeRO-3 forward): the policy's log-probs of token_ids[1:], each given its prefix,
        without temperature, as the actor's `probe_logprobs` reports them."""
        ids = torch.tensor([token_ids], device=self.device)
        self.policy.eval()
        logits = self.policy(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0, :-1]
        return logprobs_from_logits(logits, ids[0, 1:]).cpu().tolist()

    def response_logprobs(self, trajectories: list[Trajectory]) -> list[Tensor]:
        """Collective: each response's token log-probs under the current policy (CPU tensors)."""
        batch = collate(trajectories, self.tokenizer.pad_token_id, self.device)
        self.policy.eval()
        logp = self._per_token(batch, partial(self._logprobs, self.policy_lm)).cpu()
        return [row[mask.bool()] for row, mask in zip(logp, batch.response_mask.cpu(), strict=True)]

    # ------------------------------------------------------------------ learning

    def learn(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """Collective: train on this rank's shard of a rollout; returns metrics, identical on every rank.

        Rollout metrics are means over ranks; loss, gradient and LR metrics means over the
        optimizer steps of the call, each the value of its global mini-batch.
        """
        start = time.time()
        args = self.args
        per_rank_step = args.train_batch_size // self.world_size
        if len(trajectories) % per_rank_step or len(trajectories) % args.num_samples:
            raise ValueError(
                f"a rank got {len(trajectories)} responses: expected whole groups of --num_samples "
                f"({args.num_samples}) and whole mini-batches of --train_batch_size / ranks ({per_rank_step})."
            )
        batch = collate(trajectories, self.tokenizer.pad_token_id, self.device)

        # Everything the loss compares against is computed before the first update.
        self._train_mode(False)
        data = batch.token_data
        is_stats = {}
        # If so, the loss takes old_logp = logp.detach() and the importance weights from its own forward.
        old_logp_in_loss = self._one_step_from_current_weights(len(batch))
        if not old_logp_in_loss:
            if args.top_p < 1 or args.top_k > 0:  # vLLM reports truncated log-probs: compare like with like
                data["old_logp"], sampling_logp = self._per_token(batch, self._full_and_sampling_logprobs).unbind(-1)
            else:
                data["old_logp"] = sampling_logp = self._per_token(batch, partial(self._logprobs, self.policy_lm))
            is_stats = self._as_shares_of_all_tokens(
                self._importance_weights(data, sampling_logp, batch.response_mask), batch.response_mask
            )
        if self.reference_lm is not None:
            with engines.reference_on_device(self.reference_lm.model, args, self.device):
                data["ref_logp"] = self._per_token(batch, partial(self._logprobs, self.reference_lm))
        if self.critic is not None:
            data["old_values"] = self._per_token(batch, self._values)
        rewards = torch.tensor([t.reward for t in trajectories], device=self.device)  # the oracle's
        truncated = torch.tensor([t.truncated for t in trajectories], device=self.device)
        kl = data["old_logp"] - data["ref_logp"] if args.kl_penalty_coef > 0 else None
        shaped = self.shaped_rewards(rewards, batch.response_mask, truncated, kl=kl)
        data.update(self._advantages(batch, shaped))
        metrics = {
            **self._rollout_metrics(batch, rewards, shaped),
            **{f"train/{k}": float(v) for k, v in is_stats.items()},
        }

        self._train_mode(True)
        steps = []
        for _ in range(args.num_ppo_epochs):
            order = (
                torch.randperm(len(batch), generator=self.shuffle_generator)
                if self.algorithm.shuffle_minibatches
                else torch.arange(len(batch))
            )
            for indices in order.to(self.device).split(per_rank_step):
                steps.append(self._train_step(batch, indices, old_logp_in_loss))
        for name in steps[0]:
            metrics[f"train/{name}"] = sum(step[name] for step in steps) / len(steps)
        metrics["train/skipped_steps"] = sum(step["skipped_steps"] for step in steps)  # a count, not a mean
        metrics["misc/learn_time"] = time.time() - start
        metrics["misc/learner_threads"] = torch.get_num_threads()
        maxima = {f"train/{name}" for name, reduction in self.stat_reductions.items() if reduction == MAX}
        return mean_over_ranks(metrics, self.device, maxima=maxima)

    def _one_step_from_current_weights(self, responses: int) -> bool:
        """Whether this learn is one optimizer step that needs the old log-probs only in its loss.

        Then the proximal policy is the one being trained, before its update: the loss's own
        forward gives old_logp = logp.detach() exactly (as verl and TRL do), and the no-gradient pass
        over the whole batch, a quarter of the learner's work, is skipped. Not with several epochs
        or mini-batches (later updates start from moved weights), nor where something needs the
        old log-probs first (the reference KL, shaping or metric; top-k/top-p renormalisation), nor
        with dropout (a training forward would then differ from the no-gradient one).
        """
        args = self.args
        return (
            self.dropout_free
            and args.num_ppo_epochs == 1
            and responses == args.train_batch_size // self.world_size
            and self.reference_lm is None
            and args.top_p >= 1
            and args.top_k <= 0
        )

    def _importance_weights(self, data: dict[str, Tensor], sampling_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Store the importance weights of --is_correction in `data`; return their stats."""
        args = self.args
        weights, stats = importance_weights(
            sampling_logp, data["actor_logp"], mask, mode=args.is_correction, cap=args.tis_c
        )
        if args.is_correction != "none":
            data["is_weights"] = weights
        return stats

    def _as_shares_of_all_tokens(self, stats: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """This rank's token means times its share of all ranks' valid tokens (times the world size): their
        mean over ranks is then the token mean over all ranks, as the loss's stats (`_train_step`) are,
        rather than a mean of the ranks' means. Stats reduced by max are left as they are."""
        _, (token_weight,) = accumulation_weights(
            [mask], self.args.agg_mode, world_size=self.world_size, reduce_sum=all_reduce_sum
        )
        return {
            name: value * token_weight if self._reduction(name) == TOKEN_MEAN else value
            for name, value in stats.items()
        }

    def _reduction(self, stat: str) -> str:
        """How `stat` is reduced (`self.stat_reductions`); a stat whose function did not declare it is an error."""
        if stat not in self.stat_reductions:
            raise TypeError(
                f"stat {stat!r} has no declared reduction: add it to its function's declare_stats "
                f"(declared: {', '.join(self.stat_reductions)})"
            )
        return self.stat_reductions[stat]

    def _train_mode(self, mode: bool) -> None:
        for engine in self._engines().values():
            engine.train(mode)

    def _advantages(self, batch: Batch, shaped: Tensor) -> dict[str, Tensor]:
        """Per-token advantages (and with a critic, the returns) for this rank's responses, from their
        shaped rewards (`self.shaped_rewards`: per token for GAE, per response for the group
        estimators). Whitening is over the whole batch, on every rank alike.
        """
        args, mask, data, algorithm = self.args, batch.response_mask, batch.token_data, self.algorithm
        estimator = algorithm.estimator()
        out = {}
        if algorithm.needs_critic:
            advantages, out["returns"] = estimator(shaped, data["old_values"], mask, gamma=args.gamma, lam=args.lam)
        else:
            # Groups never straddle ranks, but clip_filter weighs by counts over the whole batch.
            everyone = estimator(all_gather_cat(shaped), args.num_samples, **algorithm.advantage_options(args))
            advantages = everyone.view(self.world_size, -1)[self.rank][:, None] * mask
        if algorithm.whiten_advantages or args.whiten_adv:
            advantages = masked_whiten(advantages, mask, reduce_sum=all_reduce_sum)
        out["advantages"] = advantages
        return out

    def _train_step(self, batch: Batch, indices: Tensor, old_logp_in_loss: bool) -> dict[str, float]:
        """One optimizer step on this rank's part of a mini-batch, in micro-batches.

        Exact accumulation: each micro-batch's loss is weighted by its share of the units
        (tokens or sequences, per --loss_agg_mode) of the global mini-batch, so the weighted
        sum over all ranks' micro-batches is the mini-batch loss. DeepSpeed averages gradients
        over ranks and engine.backward divides by the accumulation steps; the weights undo both.
        """
        args = self.args
        parts = [part for _, part in self._micro_batches(batch, indices, args.train_batch_size_per_device)]
        loss_weights, token_weights = accumulation_weights(
            [part.response_mask for part in parts], args.agg_mode, world_size=self.world_size, reduce_sum=all_reduce_sum
        )
        accumulation_steps = self.policy.gradient_accumulation_steps()
        lr = self.policy.get_lr()[0]

        stats: dict[str, float] = defaultdict(float)
        for index, (micro_batch, loss_weight, token_weight) in enumerate(
            zip(parts, loss_weights, token_weights, strict=True)
        ):
            # The optimizer steps after the last micro-batch, however many --packing made.
            last = index == len(parts) - 1
            loss, micro_stats = self._policy_loss(micro_batch, old_logp_in_loss)
            self._backward(self.policy, loss * loss_weight * accumulation_steps, last)
            if self.critic is not None:
                loss, critic_stats = self._critic_loss(micro_batch)
                self._backward(self.critic, loss * loss_weight * accumulation_steps, last)
                micro_stats.update(critic_stats)
            for name, value in micro_stats.items():
                reduction = self._reduction(name)
                if reduction == MAX:
                    stats[name] = max(stats[name], float(value))
                else:
                    stats[name] += float(value) * (loss_weight if reduction == LOSS else token_weight)
        stats["grad_norm"] = float(self.policy.get_global_grad_norm())
        stats["lr"] = lr
        stats["skipped_steps"] = float(self._update_was_skipped())
        return stats

    @staticmethod
    def _backward(engine: DeepSpeedEngine, loss: Tensor, last: bool) -> None:
        """Accumulate `loss`'s gradient; after the last micro-batch, reduce over ranks and step.

        DeepSpeed's own boundary counts --train_batch_size_per_device micro-batches; --packing makes
        as many as the token budget needs, so the boundary is set here. engine.backward divides by
        its configured accumulation steps, which the caller's weights undo.
        """
        engine.set_gradient_accumulation_boundary(last)
        engine.backward(loss)
        engine.step()  # updates only at the boundary

    def _update_was_skipped(self) -> bool:
        """After an optimizer step: whether it was skipped for a non-finite (NaN/inf) gradient.

        DeepSpeed's ZeRO optimizers (stages 1-3, fp32 and bf16) skip such an update themselves, on
        every rank alike (the gradient norm they test is all-reduced), and leave the LR scheduler
        where it was. More than --max_skipped_steps in a row stop the run. ZeRO stage 0 has no such
        check, so a non-finite gradient there has already reached the weights: stop at once.
        """
        engines = self._engines().values()
        skipped = not all(engine.was_step_applied() for engine in engines)
        if not skipped and not all(math.isfinite(float(engine.get_global_grad_norm())) for engine in engines):
            raise FloatingPointError(
                "a non-finite (NaN/inf) gradient was applied: --zero-stage 0 does not skip such updates. "
                "The weights are unusable; resume from the last checkpoint with --resume_dir, with ZeRO stage >= 1."
            )
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        if self.skipped_in_a_row > self.args.max_skipped_steps:
            raise FloatingPointError(
                f"{self.skipped_in_a_row} optimizer steps in a row had a non-finite (NaN/inf) loss or gradient and "
                f"were skipped (--max_skipped_steps {self.args.max_skipped_steps}); the run stops. The last "
                "checkpoint is intact: look at the rewards and the learning rate, then --resume_dir."
            )
        return skipped

    def _policy_loss(self, batch: Batch, old_logp_in_loss: bool) -> tuple[Tensor, dict[str, Tensor]]:
        args, mask = self.args, batch.response_mask
        logp, entropy = self._read(self.policy_lm, batch, _logprob_and_entropy).unbind(-1)
        data = batch.token_data
        if old_logp_in_loss:  # see _one_step_from_current_weights
            old_logp = logp.detach()
            data = {**data, "old_logp": old_logp}
            is_stats = self._importance_weights(data, old_logp, mask)
        else:
            old_logp, is_stats = data["old_logp"], {}
        loss, stats = self.policy_loss(logp, old_logp, data["advantages"], mask, is_weights=data.get("is_weights"))
        stats.update(is_stats)
        if args.beta > 0:
            kl = kl_penalty(logp, batch.token_data["ref_logp"])
            loss = loss + args.beta * aggregate(kl, mask, args.agg_mode, max_len=self.max_len)
        stats["entropy"] = masked_mean(entropy.detach(), mask)  # (a column of a tensor with gradient)
        return loss, stats

    def _critic_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        args = self.args
        loss, stats = value_loss(
            self._values(batch),
            batch.token_data["old_values"],
            batch.token_data["returns"],
            batch.response_mask,
            clip=args.cliprange_value,
            agg_mode=args.agg_mode,
            max_len=self.max_len,
        )
        return loss * args.vf_coef, stats

    # ------------------------------------------------------------------ metrics

    def _rollout_metrics(self, batch: Batch, rewards: Tensor, shaped: Tensor) -> dict[str, float]:
        """This rank's rollout statistics: the oracle's `rewards` and the `shaped` ones the advantages
        come from (GAE's per-token rewards summed over each response); advantages over response tokens."""
        mask, data = batch.response_mask, batch.token_data
        advantages = data["advantages"]
        # Over the whole batch's response tokens (every rank reports the same value).
        adv_mean, adv_var = batch_mean_var(advantages, mask, reduce_sum=all_reduce_sum)
        groups = rewards.view(-1, self.args.num_samples)
        metrics = {
            "train/reward_mean": rewards.mean(),
            "train/shaped_reward_mean": (shaped.sum(-1) if shaped.dim() == 2 else shaped).mean(),
            "train/all_correct_groups": (groups >= CORRECT_REWARD).all(-1).float().mean(),
            "train/all_wrong_groups": (groups <= 0).all(-1).float().mean(),
            "train/response_len": mask.sum(-1).mean(),
            "train/adv_mean": adv_mean,
            "train/adv_std": adv_var.sqrt(),
        }
        if self.reference_lm is not None:
            ref_kl = masked_mean(kl_penalty(data["old_logp"], data["ref_logp"]), mask)
            metrics["train/ref_kl"] = self._as_shares_of_all_tokens({"ref_kl": ref_kl}, mask)["ref_kl"]
        if self.critic is not None:
            metrics["train/explained_variance"] = explained_variance(data["old_values"], data["returns"], mask)
        return {name: float(value) for name, value in metrics.items()}

    def release_memory(self) -> None:
        """Return the device memory the allocator keeps from `learn` (activations, logits, gathered
        ZeRO-3 shards) to the device, for a collocated vLLM engine to wake into; as TRL
        (trl/trainer/grpo_trainer.py), OpenRLHF (openrlhf/trainer/ppo_trainer.py) and verl do."""
        get_accelerator().empty_cache()

    # ------------------------------------------------------------------ weights

    def connect_actors(self, actors: VLLMWeightSyncClient, num_workers: int) -> None:
        """Collective: open the weight transfer to the actors' `num_workers` vLLM workers (rank 0 drives it)."""
        from oat_cpgd.weight_sync import transfer_backend, weight_sender

        backend = transfer_backend(self.placement.on_cuda, self.placement.collocate)
        if self.weight_transfer is not None:  # reconnecting after an actor restart
            self.weight_transfer.shutdown()
        self.weight_transfer = weight_sender(backend, self.rank, num_workers, actors, self.weights())

    def sync_weights(self) -> None:
        """Collective: the policy's current weights to every actor."""
        if self.weight_transfer is None:
            raise RuntimeError("sync_weights before connect_actors")
        try:
            self.weight_transfer.send_weights()
        except BaseException:
            # Closing the communicator ends the receivers' waits in it (the actors that are still up), so
            # they can join the next transfer; until then this one is unusable.
            self.weight_transfer.shutdown()
            self.weight_transfer = None
            raise

    def weights_digest(self, pieces) -> tuple[dict, list[str]]:
        """Collective: the digests of `pieces` (oat_cpgd.weight_digest.Piece) of the weights the sync sends,
        computed by rank 0, and their names."""
        from oat_cpgd.weight_digest import expected_digests

        return expected_digests(self.weights(), pieces, compute=self.rank == 0)

    def weights(self) -> ModelWeights:
        """The policy's weights as the actors load them; every rank iterates them together (ZeRO-3 gathers)."""
        return ModelWeights(self.policy.module, zero3=self.args.zero_stage == 3)

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Collective: the DeepSpeed states (weights, optimizer, scheduler) of the policy and critic,
        the learner's shuffling RNG, and the policy in Hugging Face format under `path/policy`
        (with LoRA the merged model, and the adapter in peft's format under `path/policy_adapter`)."""
        saving.save_engines(self._engines(), path, client_state={"shuffle_rng": self.shuffle_generator.get_state()})
        self.save_pretrained(os.path.join(path, "policy"))
        if self.args.lora_rank > 0:
            from oat_cpgd.learners.lora import save_adapter

            save_adapter(self.policy.module, os.path.join(path, "policy_adapter"), self.rank, self.args.zero_stage == 3)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Collective: restore what `save_checkpoint` wrote."""
        client_state = saving.load_engines(self._engines(), path)
        self.shuffle_generator.set_state(client_state["shuffle_rng"])

    def scale_learning_rate(self, factor: float) -> None:
        """The policy's (and critic's) LR times `factor`, now and at every later step of its schedule (the
        sentinel's remedy, oat_cpgd.sentinel). Each rank scales its own optimizer alike: no collective."""
        for engine in self._engines().values():
            scheduler = engine.lr_scheduler
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
            for group in engine.optimizer.param_groups:
                group["lr"] *= factor

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Collective: rank 0 writes config, safetensors weights and tokenizer (Hugging Face format; with
        LoRA the merged model, which loads without peft)."""
        args = self.args
        saving.save_pretrained(
            self.policy, self.tokenizer, path, rank=self.rank, zero3=args.zero_stage == 3, lora=args.lora_rank > 0
        )

    def _engines(self) -> dict[str, DeepSpeedEngine]:
        return {"policy": self.policy, **({"critic": self.critic} if self.critic is not None else {})}
