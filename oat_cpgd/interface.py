"""The whole program on one screen: Ray places actors and learners, then the online loop.

prompts --(sampler)--> actors: vLLM generate K responses, oracle scores them
        --(whole groups)--> learner ranks: DeepSpeed learn
        --(every --sync_params_every steps)--> new weights to every actor
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import ray
import safetensors.torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from transformers import AutoTokenizer

from oat_cpgd.args import PPOArgs
from oat_cpgd.checkpoint import checkpoints_dir, latest_checkpoint, load_state, save_checkpoint
from oat_cpgd.data import PromptSet, build_prompts, load_split
from oat_cpgd.evaluation import load_eval_sets, run_evaluation, write_eval_results
from oat_cpgd.plot import plot_run
from oat_cpgd.run_log import RunLog
from oat_cpgd.types import Trajectory

logger = logging.getLogger(__name__)

# Environment the Ray workers need: caches inside the work tree, offline mode, allocator tuning.
FORWARDED_ENV_PREFIXES = (
    "HF_",
    "TRANSFORMERS_",
    "VLLM_",
    "TORCH_",
    "XDG_CACHE_HOME",
    "WANDB_",
    "MALLOC_",
    "TOKENIZERS_",
)


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    # User oracles (`--oracle my_module:MyOracle`) import from the launch directory, as in the driver.
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    return env


def ray_temp_dir() -> str:
    """A fresh folder for Ray's session files, in RAY_TMPDIR (the work tree) when short enough.

    Ray puts unix sockets below it, and socket paths must stay under ~107 characters.
    """
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    if len(base) > 32:
        logger.warning("RAY_TMPDIR %s is too long for Ray's socket paths; using %s", base, tempfile.gettempdir())
        base = tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="ray-", dir=base)


def start_local_ray() -> str:
    """Start a private single-machine cluster, all its traffic on loopback; returns its temp dir."""
    temp_dir = ray_temp_dir()
    ray.init(
        include_dashboard=False,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": worker_env()},
    )
    return temp_dir


@contextlib.contextmanager
def ray_session(args: PPOArgs) -> Iterator[None]:
    """Attach to --ray_address, reuse a running session, or start a local cluster and tear it down."""
    if ray.is_initialized():
        yield
        return
    temp_dir = None
    if args.ray_address:
        ray.init(address=args.ray_address, runtime_env={"env_vars": worker_env()})
    else:
        temp_dir = start_local_ray()
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def load_train_prompts(args: PPOArgs, tokenizer) -> PromptSet:
    return build_prompts(
        load_split(args.prompt_data, args.train_split),
        tokenizer,
        input_key=args.input_key,
        output_key=args.output_key,
        prompt_template=args.prompt_template,
        apply_chat_template=args.apply_chat_template,
        prompt_max_length=args.prompt_max_length,
        max_items=args.max_train,
    )


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


def spawn_learners(args: PPOArgs, learner_cls, total_optimizer_steps: int) -> list:
    """One Ray actor per learner rank; rank 0 on the driver's node hosts the rendezvous."""
    driver_node = ray.get_runtime_context().get_node_id()
    driver_ip = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == driver_node)
    master = {"MASTER_ADDR": driver_ip, "MASTER_PORT": str(free_port())}
    gpus_each = 0.5 if args.collocate else 1
    learners = []
    for rank in range(args.learner_ranks):
        options = {
            "num_cpus": 0,
            "num_gpus": gpus_each if args.on_cuda else 0,
            "runtime_env": {"env_vars": {**worker_env(), **master}},
        }
        if rank == 0:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(driver_node, soft=False)
        learners.append(
            ray.remote(learner_cls).options(**options).remote(args, rank, args.learner_ranks, total_optimizer_steps)
        )
    return learners


def spawn_actors(args: PPOArgs, actor_cls) -> list:
    gpus_each = 0.5 if args.collocate else args.vllm_tensor_parallel_size
    remote_cls = ray.remote(actor_cls).options(num_cpus=0, num_gpus=gpus_each if args.on_cuda else 0)
    return [remote_cls.remote(args, index) for index in range(args.actor_count)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


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


def sync_weights(learners: list, actors: list) -> float:
    """Learner rank 0's full weights to every actor; returns the wall time."""
    start = time.perf_counter()
    state = ray.get([learner.state_for_sync.remote() for learner in learners])[0]
    payload = ray.put(safetensors.torch.save(state))
    ray.get([actor.update_weights.remote(payload) for actor in actors])
    return time.perf_counter() - start


def run(args: PPOArgs, learner_cls=None, actor_cls=None) -> Path:
    """Train (or, with --resume_dir, continue); returns the run folder."""
    from oat_cpgd.actors import Actor
    from oat_cpgd.learners import Learner

    learner_cls, actor_cls = learner_cls or Learner, actor_cls or Actor
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    prompts = load_train_prompts(args, tokenizer)
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
        if resume_from:
            ray.get([lr.load_checkpoint.remote(str(resume_from)) for lr in learners])
            sync_weights(learners, actors)  # the first rollout samples from the restored policy

        def draw(step: int) -> tuple[list[int], list]:
            indices = prompt_order(len(prompts), args.seed, step, args.rollout_batch_size)
            return indices, start_rollout(args, actors, prompts, indices)

        def evaluate(step: int) -> dict[str, float]:
            """Eval metrics at `step` (empty when none is due); the actors answer with the current weights."""
            if not eval_sets or not (step == 0 or step % args.eval_steps == 0 or step == steps):
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
            eval_due = bool(eval_sets) and (step % args.eval_steps == 0 or step == steps)
            sync_due = step % args.sync_params_every == 0 or step == steps or eval_due
            sync_time = sync_weights(learners, actors) if sync_due else 0.0
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
