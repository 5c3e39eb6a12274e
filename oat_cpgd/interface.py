"""The whole program on one screen: Ray places actors and learners, then the online loop.

prompts --(sampler)--> actors: vLLM generate K responses, oracle scores them
        --(whole groups)--> learner ranks: DeepSpeed learn
        --(every --sync_params_every steps)--> new weights to every actor
"""

from __future__ import annotations

import logging
import sys
import time
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


def finish_rollout(futures: list) -> tuple[list[Trajectory], dict[str, float]]:
    results = ray.get(futures)
    trajectories = [t for chunk, _ in results for t in chunk]
    metrics = {k: float(np.mean([m[k] for _, m in results])) for k in results[0][1]}
    return trajectories, metrics


def connect(learners: list, actors: list) -> None:
    """Open the weight transfer from the learners to every actor's vLLM workers."""
    workers = ray.get([actor.weight_workers.remote() for actor in actors])
    ray.get([learner.connect_actors.remote(ActorGroup(actors, workers), sum(workers)) for learner in learners])


def sync_weights(learners: list) -> float:
    """The policy's weights to every actor (learner rank 0 sends); returns the wall time."""
    start = time.perf_counter()
    ray.get([learner.sync_weights.remote() for learner in learners])
    return time.perf_counter() - start


def run(args: PPOArgs, learner_cls=None, actor_cls=None) -> Path:
    """Train (or, with --resume_dir, continue); returns the run folder."""
    from oat_cpgd.actors import Actor
    from oat_cpgd.learners import Learner

    learner_cls, actor_cls = learner_cls or Learner, actor_cls or Actor
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    prompts = load_prompts(args, tokenizer, source=args.prompt_data, split=args.train_split,
                           input_key=args.input_key, output_key=args.output_key, max_items=args.max_train)  # fmt: skip
    eval_sets = load_eval_sets(args, tokenizer) if args.eval_steps > 0 else {}
    steps = num_learning_steps(args, len(prompts))
    optimizer_steps = steps * args.num_ppo_epochs * args.rollout_batch_size * args.num_samples // args.train_batch_size
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
        learners = spawn_learners(args, learner_cls, optimizer_steps)
        ray.get([a.__ray_ready__.remote() for a in actors + learners])
        connect(learners, actors)
        if resume_from:
            ray.get([lr.load_checkpoint.remote(str(resume_from)) for lr in learners])
            sync_weights(learners)  # the first rollout samples from the restored policy

        def draw(step: int) -> tuple[list[int], list]:
            indices = prompt_order(len(prompts), args.seed, step, args.rollout_batch_size)
            return indices, start_rollout(args, actors, prompts, indices)

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
            trajectories, actor_metrics = finish_rollout(futures)
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
            sync_time = sync_weights(learners) if sync_due else 0.0
            # Queued after the sync on each actor (Ray keeps an actor's calls in order): new weights.
            eval_metrics = evaluate(step)
            if pending is None and step < steps:
                pending = draw(step + 1)

            run_log.log_step(
                step,
                trajectories,
                indices,
                {
                    **train_metrics,
                    **actor_metrics,
                    "misc/rollout_time": rollout_time,
                    "misc/weight_sync_time": sync_time,
                    "misc/step_time": time.perf_counter() - step_start,
                    **eval_metrics,
                },
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
