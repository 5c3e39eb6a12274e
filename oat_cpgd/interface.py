"""The whole program on one screen: Ray places actors and learners, then the online loop.

prompts --(sampler)--> actors: vLLM generate K responses, oracle scores them
        --(whole groups)--> learner ranks: DeepSpeed learn
        --(every --sync_params_every steps)--> new weights to every actor
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
from transformers import AutoTokenizer

from oat_cpgd.args import PPOArgs
from oat_cpgd.checkpoint import checkpoints_dir, latest_checkpoint, load_state, save_checkpoint
from oat_cpgd.data import PromptSet, load_prompts
from oat_cpgd.evaluation import load_eval_sets, run_evaluation, write_eval_results
from oat_cpgd.placement import ActorGroup, ray_session, spawn_actors, spawn_learners
from oat_cpgd.plot import plot_run
from oat_cpgd.run_log import RunLog
from oat_cpgd.types import Trajectory


def prompt_order(num_prompts: int, seed: int, step: int, batch_size: int) -> list[int]:
    """Prompts drawn at learning step `step` (1-based): a fresh seeded permutation each epoch.

    A pure function of its arguments, so a resumed run draws exactly what the original would have.
    """
    start = (step - 1) * batch_size
    drawn = []
    while len(drawn) < batch_size:
        epoch, offset = divmod(start + len(drawn), num_prompts)
        permutation = np.random.default_rng([seed, epoch]).permutation(num_prompts)
        drawn.extend(permutation[offset : offset + batch_size - len(drawn)].tolist())
    return drawn


def extra_prompt_order(num_prompts: int, seed: int, step: int, draw: int, batch_size: int) -> list[int]:
    """Prompts of dynamic sampling's `draw`-th extra draw (1-based) at learning step `step`.

    Seeded by (seed, step, draw), apart from the epoch order: how many extra draws a step needed
    does not change what any other step draws, so `prompt_order` stays a pure function.
    """
    permutation = np.random.default_rng([seed, step, draw, 1]).permutation(num_prompts)
    return np.resize(permutation, batch_size).tolist()


def is_informative(group: list[Trajectory]) -> bool:
    """A group whose oracle rewards are not all equal: its advantages are not all 0."""
    return len({t.oracle_reward for t in group}) > 1


def groups_of(trajectories: list[Trajectory], size: int) -> list[list[Trajectory]]:
    return [trajectories[i : i + size] for i in range(0, len(trajectories), size)]


def fill_with_informative_groups(
    groups: list[list[Trajectory]], needed: int, draw_more: Callable[[int], list[list[Trajectory]]], max_draws: int
) -> tuple[list[list[Trajectory]], int]:
    """DAPO's dynamic sampling: `needed` groups, informative ones first, in the order drawn.

    `draw_more(n)` samples the n-th extra batch of groups; at most `max_draws` are drawn. If there
    are still too few informative groups, uninformative ones (advantage 0) fill the step so the
    batch keeps its shape. Returns the groups and the number of extra draws.
    """
    informative = [g for g in groups if is_informative(g)]
    spare = [g for g in groups if not is_informative(g)]
    draws = 0
    while len(informative) < needed and draws < max_draws:
        draws += 1
        more = draw_more(draws)
        informative += [g for g in more if is_informative(g)]
        spare += [g for g in more if not is_informative(g)]
    return (informative + spare)[:needed], draws


def num_learning_steps(args: PPOArgs, num_prompts: int) -> int:
    steps = num_prompts * args.num_prompt_epoch // args.rollout_batch_size
    if steps == 0:
        raise ValueError(
            f"{num_prompts} prompts x {args.num_prompt_epoch} epochs is less than one "
            f"--rollout_batch_size ({args.rollout_batch_size})"
        )
    return min(steps, args.max_steps) if args.max_steps > 0 else steps


def start_rollout(args: PPOArgs, actors: list, prompts: PromptSet, indices: list[int]) -> list:
    """Chunks of --rollout_batch_size_per_device prompts, dealt round-robin to the actors."""
    size = args.rollout_batch_size_per_device
    chunks = [indices[i : i + size] for i in range(0, len(indices), size)]
    return [
        actors[n % len(actors)].step.remote(
            [prompts.prompt_ids[i] for i in chunk],
            [prompts.prompts[i] for i in chunk],
            [prompts.references[i] for i in chunk],
            [prompts.indices[i] for i in chunk],
        )
        for n, chunk in enumerate(chunks)
    ]


def finish_rollout(futures: list) -> tuple[list[Trajectory], list[dict[str, float]]]:
    """The trajectories of every chunk, in order, and each chunk's actor metrics."""
    results = ray.get(futures)
    return [t for chunk, _ in results for t in chunk], [metrics for _, metrics in results]


def mean_metrics(chunks: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([m[k] for m in chunks])) for k in chunks[0]}


def connect(learners: list, actors: list) -> None:
    """Open the weight transfer from the learners to every actor's vLLM workers."""
    workers = ray.get([actor.weight_workers.remote() for actor in actors])
    ray.get([learner.connect_actors.remote(ActorGroup(actors, workers), sum(workers)) for learner in learners])


def sync_weights(learners: list, actors: list, version: int) -> float:
    """The policy's weights after `version` learning steps to every actor (learner rank 0 sends);
    returns the wall time. The actors label what they sample next with `version`."""
    start = time.perf_counter()
    ray.get([learner.sync_weights.remote() for learner in learners])
    ray.get([actor.set_weight_version.remote(version) for actor in actors])
    return time.perf_counter() - start


def run(args: PPOArgs, learner_cls=None, actor_cls=None) -> Path:
    """Train (or, with --resume_dir, continue); returns the run folder."""
    from oat_cpgd.actors import Actor
    from oat_cpgd.learners import Learner
    from oat_cpgd.learners.schedule import schedule_steps

    learner_cls, actor_cls = learner_cls or Learner, actor_cls or Actor
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    prompts = load_prompts(args, tokenizer, source=args.prompt_data, split=args.train_split,
                           input_key=args.input_key, output_key=args.output_key, max_items=args.max_train)  # fmt: skip
    eval_sets = load_eval_sets(args, tokenizer) if args.eval_steps > 0 else {}
    steps = num_learning_steps(args, len(prompts))
    lr_steps = schedule_steps(args, len(prompts))
    optimizer_steps = steps * args.num_ppo_epochs * args.rollout_batch_size * args.num_samples // args.train_batch_size
    if lr_steps * args.max_step_adjustment < optimizer_steps:
        logging.getLogger(__name__).warning(
            "the LR schedule spans %g optimizer steps (oat's count: %d x --max_step_adjustment %g) but the run "
            "takes %d; after that the scheduler runs past its end. Set --max_step_adjustment to "
            "--num_samples x --num_ppo_epochs (%d) for it to end with the run.",
            lr_steps * args.max_step_adjustment, lr_steps, args.max_step_adjustment, optimizer_steps,
            args.num_samples * args.num_ppo_epochs,
        )  # fmt: skip
    run_dir = Path(args.resume_dir or Path(args.save_path) / args.wb_run_name)
    resume_from = latest_checkpoint(run_dir) if args.resume_dir else None
    if args.resume_dir and resume_from is None:
        raise FileNotFoundError(f"--resume_dir {args.resume_dir}: no complete checkpoint in {checkpoints_dir(run_dir)}")
    done_steps = load_state(resume_from)["step"] if resume_from else 0
    run_log = RunLog(
        run_dir, args, dropped_prompts=prompts.num_dropped, resume_step=done_steps if resume_from else None
    )

    with ray_session(args):
        actors = spawn_actors(args, actor_cls)
        learners = spawn_learners(args, learner_cls, lr_steps)
        ray.get([a.__ray_ready__.remote() for a in actors + learners])
        connect(learners, actors)
        if resume_from:
            ray.get([lr.load_checkpoint.remote(str(resume_from)) for lr in learners])
            sync_weights(learners, actors, done_steps)  # the first rollout samples from the restored policy

        def draw(step: int) -> tuple[list[int], list]:
            indices = prompt_order(len(prompts), args.seed, step, args.rollout_batch_size)
            return indices, start_rollout(args, actors, prompts, indices)

        def collect(step: int, futures: list) -> tuple[list[Trajectory], dict[str, float], list[int]]:
            """The step's trajectories, actor metrics and, with --dynamic_sampling, the extra prompts drawn."""
            trajectories, chunk_metrics = finish_rollout(futures)
            if not args.dynamic_sampling:
                return trajectories, mean_metrics(chunk_metrics), []
            extra: list[int] = []

            def draw_more(draw: int) -> list[list[Trajectory]]:
                indices = extra_prompt_order(len(prompts), args.seed, step, draw, args.rollout_batch_size)
                extra.extend(indices)
                more, more_metrics = finish_rollout(start_rollout(args, actors, prompts, indices))
                chunk_metrics.extend(more_metrics)
                return groups_of(more, args.num_samples)

            groups, draws = fill_with_informative_groups(
                groups_of(trajectories, args.num_samples),
                args.rollout_batch_size,
                draw_more,
                args.dynamic_sampling_max_draws,
            )
            metrics = {
                **mean_metrics(chunk_metrics),
                "misc/dynamic_sampling_draws": draws,
                "misc/prompts_drawn": args.rollout_batch_size + len(extra),
                "train/informative_groups": sum(map(is_informative, groups)) / len(groups),
            }
            return [t for group in groups for t in group], metrics, extra

        def eval_due(step: int) -> bool:
            """Before the first step, every --eval_steps steps, and after the last."""
            return bool(eval_sets) and (step == 0 or step % args.eval_steps == 0 or step == steps)

        def evaluate(step: int) -> dict[str, float]:
            """Eval metrics at `step` (empty when none is due); the actors answer with the current weights."""
            if not eval_due(step):
                return {}
            metrics, per_bench = run_evaluation(actors, eval_sets, args)
            write_eval_results(run_dir, step, per_bench)
            return metrics

        def checkpoint(step: int) -> None:
            state = {"step": step, "prompts_drawn": step * args.rollout_batch_size, "num_prompts": len(prompts)}
            write = lambda folder: ray.get([lr.save_checkpoint.remote(str(folder)) for lr in learners])  # noqa: E731
            save_checkpoint(run_dir, step, state, write, args.max_save_num)

        if not resume_from:
            run_log.log_eval(0, evaluate(0))
        pending: tuple[list[int], list] | None = draw(done_steps + 1)
        for step in run_log.progress(range(done_steps + 1, steps + 1), total=steps, initial=done_steps):
            step_start = time.perf_counter()
            indices, futures = pending
            trajectories, actor_metrics, extra_indices = collect(step, futures)
            # Asynchronous: the next rollout runs on the current weights while the learners learn.
            pending = draw(step + 1) if args.asynchronous and step < steps else None
            rollout_time = time.perf_counter() - step_start

            if args.collocate:
                ray.get([a.sleep.remote() for a in actors])
            shard = len(trajectories) // len(learners)
            train_metrics = ray.get(
                [lr.learn.remote(trajectories[r * shard : (r + 1) * shard]) for r, lr in enumerate(learners)]
            )[0]
            if args.collocate:
                ray.get([a.wake_up.remote() for a in actors])
            sync_due = step % args.sync_params_every == 0 or step == steps or eval_due(step)
            sync_time = sync_weights(learners, actors, step) if sync_due else 0.0
            # Queued after the sync on each actor (Ray keeps an actor's calls in order): new weights.
            eval_metrics = evaluate(step)
            if pending is None and step < steps:
                pending = draw(step + 1)

            rollout_version = min(t.weight_version for t in trajectories)
            run_log.log_step(
                step,
                trajectories,
                indices,
                {
                    **train_metrics,
                    **actor_metrics,
                    # The learner trained on weights after step - 1 updates.
                    "misc/rollout_weight_version": rollout_version,
                    "misc/policy_lag": step - 1 - rollout_version,
                    "misc/rollout_time": rollout_time,
                    "misc/weight_sync_time": sync_time,
                    "misc/step_time": time.perf_counter() - step_start,
                    **eval_metrics,
                },
                extra_indices,
            )
            if args.plot:
                plot_run(run_dir)
            if (args.save_steps > 0 and step % args.save_steps == 0) or step == steps:
                checkpoint(step)

        ray.get([lr.save_pretrained.remote(str(run_dir / "final_model")) for lr in learners])
        ray.get([a.close.remote() for a in actors])
    run_log.close()
    plot_run(run_dir)
    return run_dir


def main(args: PPOArgs, learner_cls=None, actor_cls=None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = run(args, learner_cls, actor_cls)
    print(
        f"run finished: metrics in {run_dir / 'metrics.jsonl'}, curves in {run_dir / 'curves.png'}, "
        f"model in {run_dir / 'final_model'}"
    )
