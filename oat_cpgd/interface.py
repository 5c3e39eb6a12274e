"""The whole program, top down in one file: Ray places actors and learners, then the online loop.

prompts --(sampler)--> actors: vLLM generate K responses, oracle scores them
        --(whole groups)--> learner ranks: DeepSpeed learn
        --(every --sync_params_every steps)--> new weights to every actor, checked on a probe
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from transformers import AutoTokenizer

from oat_cpgd.args import ConfigError, PPOArgs
from oat_cpgd.checkpoint import (
    CheckpointSaveError,
    checkpoints_dir,
    complete_checkpoints,
    latest_checkpoint,
    load_pending_rollout,
    load_state,
    prompts_fingerprint,
    remove,
    resume_differences,
    save_checkpoint,
    save_pending_rollout,
    step_of,
)
from oat_cpgd.cluster import cluster_nodes, ray_session, reserve
from oat_cpgd.console import FORMAT, Console, run_folder
from oat_cpgd.data import PromptSet, load_prompts
from oat_cpgd.evaluation import load_eval_sets, local_oracle, run_evaluation, write_eval_results
from oat_cpgd.placement import plan_placement
from oat_cpgd.plot import plot_run
from oat_cpgd.roles import LearnersLost, RoleFailed, Roles, SyncCheck
from oat_cpgd.rollout import (
    Rollout,
    extra_prompt_order,
    fill_with_informative_groups,
    finish_rollout,
    groups_of,
    is_informative,
    mean_metrics,
    prompt_order,
    start_rollout,
)
from oat_cpgd.run_log import RunLog, refuse_a_used_run_dir, summary
from oat_cpgd.sentinel import Collapse, Course, Sentinel, SentinelGaveUp
from oat_cpgd.types import Trajectory

logger = logging.getLogger(__name__)
ROLLBACK_DIR = "rollback"
"""<run folder>/rollback/checkpoints/: the sentinel's rollback points (checkpoints, as oat_cpgd.checkpoint)."""
ROLLBACK_KEEP = 3
"""Rollback points kept: a rollback needs one from 2 steps before the alarm (see --sentinel_keep)."""


def num_learning_steps(args: PPOArgs, num_prompts: int) -> int:
    steps = num_prompts * args.num_prompt_epoch // args.rollout_batch_size
    if steps == 0:
        raise ValueError(
            f"{num_prompts} prompts x {args.num_prompt_epoch} epochs is less than one "
            f"--rollout_batch_size ({args.rollout_batch_size})"
        )
    return min(steps, args.max_steps) if args.max_steps > 0 else steps


def checkpoint_to_resume(args: PPOArgs, run_dir: Path, prompts: PromptSet, fingerprint: str) -> Path | None:
    """With --resume_dir, its newest complete checkpoint, once the flags and data are known to match
    the saved run's (checked before any engine starts); None for a fresh run."""
    if not args.resume_dir:
        return None
    resume_from = latest_checkpoint(run_dir)
    if resume_from is None:
        raise FileNotFoundError(f"--resume_dir {args.resume_dir}: no complete checkpoint in {checkpoints_dir(run_dir)}")
    saved_config = json.loads((run_dir / "config.json").read_text())
    differences = resume_differences(
        saved_config,
        json.loads(args.to_json()),
        load_state(resume_from),
        len(prompts),
        fingerprint,
        defaults=json.loads(type(args)().to_json()),
    )
    if differences:
        raise ValueError(
            f"--resume_dir {run_dir} cannot continue with these flags and data; it differs in:\n  "
            + "\n  ".join(differences)
            + "\n(--rnd-seed draws a new seed: pass the saved --seed instead)"
        )
    return resume_from


def run(args: PPOArgs, learner_cls=None, actor_cls=None) -> Path:
    """Train (or, with --resume_dir, continue); returns the run folder.

    Without --verbose, what the libraries print (here and in the roles' processes) goes to
    `<run folder>/logs/`, and the console shows the progress bar and oat_cpgd's warnings (oat_cpgd.console).
    """
    run_dir = run_folder(args)
    if args.resume_dir and not run_dir.is_dir():
        raise FileNotFoundError(f"--resume_dir {args.resume_dir}: no such folder")
    if not args.resume_dir:
        refuse_a_used_run_dir(run_dir)  # before anything is written there
    with Console(run_dir, args.verbose) as console:
        _run(args, run_dir, console, learner_cls, actor_cls)
    return run_dir


def _run(args: PPOArgs, run_dir: Path, console: Console, learner_cls, actor_cls) -> None:
    # Imported here, where their import-time output goes to the driver's log.
    from oat_cpgd.actors import Actor
    from oat_cpgd.learners import Learner
    from oat_cpgd.learners.schedule import schedule_steps, schedule_warnings

    learner_cls, actor_cls = learner_cls or Learner, actor_cls or Actor
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    oracle = local_oracle(args)  # checks references and compares answers in the driver; starts no workers
    prompts = load_prompts(args, tokenizer, source=args.prompt_data, split=args.train_split,
                           input_key=args.input_key, output_key=args.output_key, max_items=args.max_train,
                           check_reference=oracle.check_reference)  # fmt: skip
    eval_sets = load_eval_sets(args, tokenizer, oracle) if args.eval_steps > 0 else {}
    steps = num_learning_steps(args, len(prompts))
    lr_steps = schedule_steps(args, len(prompts), steps)
    for warning in schedule_warnings(args, lr_steps, steps):
        logger.warning(warning)
    fingerprint = prompts_fingerprint(prompts.indices, prompts.prompts)  # saved with every checkpoint
    resume_from = checkpoint_to_resume(args, run_dir, prompts, fingerprint)
    done_steps = load_state(resume_from)["step"] if resume_from else 0
    course = Course.from_state(load_state(resume_from)) if resume_from else Course()
    kl_floor = args.sync_check_tolerance**2 / 2  # the KL of a log-prob gap the sync check passes
    sentinel = (
        Sentinel(args.sentinel_k, args.sentinel_window, kl_floor, args.sentinel_max_drift) if args.sentinel else None
    )

    with ray_session(args.ray_address, log_to_driver=args.verbose):
        # From the cluster's resources, not the driver's devices: a ConfigError here comes before any engine starts.
        reservation = reserve(plan_placement(cluster_nodes(), args))
        try:
            for line in reservation.lines():
                logger.info(line)
            # Only now the run's files are written (logs/ aside): a cluster that refuses the flags leaves
            # nothing to clear.
            run_log = RunLog(
                run_dir,
                args,
                dropped_prompts=prompts.total_dropped,
                resume_step=done_steps if resume_from else None,
                console=console,
            )
            roles = Roles.start(args, reservation, learner_cls, actor_cls, lr_steps, run_dir)
            try:
                checkpoint = resume_from
                while True:
                    try:
                        _train(args, roles, prompts, fingerprint, eval_sets, oracle, run_dir, run_log, steps,
                               checkpoint, course, sentinel)  # fmt: skip
                        break
                    except Collapse as collapse:
                        checkpoint = roll_back(args, roles, run_dir, run_log, sentinel, course, collapse)
                    except LearnersLost as lost:
                        # The learner ranks start again from the latest checkpoint; the steps since are replayed.
                        roles.restart_learners(lost)
                        checkpoint = latest_checkpoint(run_dir)
                        roles.events["misc/steps_replayed"] += run_log.rewind(
                            load_state(checkpoint)["step"] if checkpoint else 0
                        )
            except BaseException:
                roles.kill()
                raise
        finally:
            reservation.release()
    run_log.close()
    plot_run(run_dir)


def roll_back(
    args, roles, run_dir: Path, run_log: RunLog, sentinel: Sentinel, course: Course, collapse: Collapse
) -> Path:
    """After the sentinel's alarm: the rollback point to go on from (the newest from at least 2 steps before
    the alarm: the weights that sampled the alarming step's rollout had already taken the bad update), with
    the remedy applied to `course`. What came after that point (checkpoints, logged steps, the sentinel's
    history) is forgotten. Raises SentinelGaveUp once --max_rollbacks are spent."""
    alarm = collapse.alarm
    points = run_dir / ROLLBACK_DIR
    point = latest_checkpoint(points, at_most=alarm.step - 2) or latest_checkpoint(points, at_most=alarm.step - 1)
    stops = course.rollbacks >= args.max_rollbacks or point is None
    record = {**alarm.__dict__, "back_to": step_of(point) if point else None, "stopped": stops}
    with (run_dir / "sentinel.jsonl").open("a") as out:
        out.write(json.dumps({**record, "metrics": collapse.metrics}) + "\n")
    course.alarms.append(alarm.text())
    if stops:
        why = f"--max_rollbacks {args.max_rollbacks} are spent" if point else "no rollback point is from before it"
        raise SentinelGaveUp(
            f"the sentinel fired and {why}, so the run stops. Its alarms:\n  "
            + "\n  ".join(course.alarms)
            + f"\n(every alarm, with its step's metrics: {run_dir / 'sentinel.jsonl'}; {roles.resume_hint()})"
        )
    back_to = step_of(point)
    for later in complete_checkpoints(points) + complete_checkpoints(run_dir):
        if step_of(later) > back_to:  # of the course that collapsed: never to be resumed from
            remove(later)
    course.rollbacks += 1
    if args.sentinel_remedy in ("lr", "both"):
        course.lr_factor *= args.sentinel_lr_factor
    if args.sentinel_remedy in ("skip", "both"):
        course.prompt_offset += alarm.step - back_to  # the prompts of the steps rolled back are not drawn again
    sentinel.forget_after(back_to)
    roles.events["misc/steps_replayed"] += run_log.rewind(back_to)
    logger.warning(
        "sentinel: %s; rolled back to step %d (rollback %d of --max_rollbacks %d), going on with the LR x%g of "
        "--learning_rate's schedule and %d steps' prompts skipped",
        alarm.text(), back_to, course.rollbacks, args.max_rollbacks, course.lr_factor, course.prompt_offset,
    )  # fmt: skip
    return point


def _train(args, roles, prompts, fingerprint, eval_sets, oracle, run_dir, run_log, steps, resume_from, course,
           sentinel) -> None:  # fmt: skip
    """The steps after `resume_from` (None: all of them), on `roles`; the loop of `_run`, which starts it
    again from the latest checkpoint when the learner ranks are lost, or from a rollback point when the
    sentinel fires (the Collapse it raises)."""
    done_steps = load_state(resume_from)["step"] if resume_from else 0
    roles.learned(done_steps)
    roles.connect()
    if resume_from:
        roles.on_learners("load_checkpoint", str(resume_from))
        saved_factor = Course.from_state(load_state(resume_from)).lr_factor
        if course.lr_factor != saved_factor:  # the sentinel's LR remedy since that checkpoint was saved
            roles.on_learners("scale_learning_rate", course.lr_factor / saved_factor)
    # Collocated, the engines sleep since start-up (oat_cpgd.roles.start_roles) or the last learn.
    if args.collocate:
        roles.on_actors("wake_up", ["weights"])
    if resume_from or roles.learner_restarts:
        roles.sync()  # the first rollout samples from the restored policy
    if args.collocate:
        roles.on_actors("wake_up", ["kv_cache"])
    syncs = 0
    check: SyncCheck | None = None  # the last sync's check, collected once the next rollout is in
    checks_started = 0

    def draw(step: int) -> Rollout:
        indices = prompt_order(len(prompts), args.seed, step + course.prompt_offset, args.rollout_batch_size)
        return Rollout(indices, start_rollout(args, roles, prompts, indices, step))

    def collect(step: int, rollout: Rollout) -> tuple[list[Trajectory], dict[str, float], list[int]]:
        """The step's trajectories, actor metrics and, with --dynamic_sampling, the extra prompts drawn."""
        trajectories, chunk_metrics = rollout.finish(roles)
        chunk_metrics = list(chunk_metrics)  # a copy: the extra draws' metrics join it, not the saved rollout
        if not args.dynamic_sampling:
            return trajectories, mean_metrics(chunk_metrics), []
        extra: list[int] = []

        def draw_more(draw: int) -> list[list[Trajectory]]:
            indices = extra_prompt_order(
                len(prompts), args.seed, step + course.prompt_offset, draw, args.rollout_batch_size
            )
            extra.extend(indices)
            more, more_metrics = finish_rollout(start_rollout(args, roles, prompts, indices, step, draw), roles)
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
        metrics, per_bench = run_evaluation(roles, eval_sets, args, oracle)
        write_eval_results(run_dir, step, per_bench)
        return metrics

    def sync_due(step: int) -> bool:
        return step % args.sync_params_every == 0 or step == steps or eval_due(step)

    def learn_and_sync(step: int, trajectories: list[Trajectory]) -> dict[str, float]:
        """The step's update and its way to the actors; collocated, in the order that leaves a GPU's
        memory to one role at a time (TRL trl/generation/vllm_generation.py, OpenRLHF
        openrlhf/trainer/ppo_trainer.py, verl's vLLM rollout):
        1. the engines sleep (their weights go to host memory, their KV cache is dropped);
        2. the learners learn;
        3. they free the memory their allocator keeps from it;
        4. the engines wake their weights only, which the sync overwrites;
        5. with --asynchronous, the next rollout ends first: the ZeRO-3 gathers of a sync are
           collectives with a timeout, which ranks would enter while rank 0 waits for busy actors (oat);
        6. the new weights go to the engines, and the learners free what the sync gathered;
        7. the engines wake their KV cache; then the sync check is queued on both sides, behind the
           sync, and collected when the next step learns (the actors answer it before the next rollout).
        """
        nonlocal syncs, check, checks_started
        checks = [finish_check()]  # before the learners learn from what the checked weights sampled
        if args.collocate:
            roles.on_actors("sleep")
        shard = len(trajectories) // len(roles.learners)
        metrics = roles.on_learners(
            "learn", per_rank=[(trajectories[r * shard : (r + 1) * shard],) for r in range(len(roles.learners))]
        )[0]
        roles.learned(step)
        if args.collocate:
            roles.on_learners("release_memory")
            roles.on_actors("wake_up", ["weights"])
        if args.asynchronous and pending is not None:
            pending.finish(roles)
        due = sync_due(step)
        metrics["misc/weight_sync_time"] = roles.sync() if due else 0.0
        syncs += due
        if args.collocate:
            roles.on_learners("release_memory")  # the sync's gathered layers and packed buffers
            roles.on_actors("wake_up", ["kv_cache"])
        if due and args.sync_check_every > 0 and syncs % args.sync_check_every == 0:
            if args.weight_digest_every > 0 and checks_started % args.weight_digest_every == 0:
                metrics["misc/weight_digest_time"] = roles.check_weights()  # exact, so not every time
            check = roles.start_check(prompts.prompt_ids[0])
            checks_started += 1
        if step == steps:  # no rollout follows to hide the check behind
            checks.append(finish_check())
        checks = [c for c in checks if c]
        if checks:
            metrics["misc/sync_check_gap"] = max(gap for gap, _ in checks)
            metrics["misc/sync_check_time"] = sum(seconds for _, seconds in checks)
        return metrics

    def finish_check() -> tuple[float, float] | None:
        """The pending check's gap and the seconds the loop waited for it; None if none is pending."""
        nonlocal check
        if check is None:
            return None
        start = time.perf_counter()
        gap = roles.finish_check(check, args.sync_check_tolerance)
        check = None
        return gap, time.perf_counter() - start

    def checkpoint(step: int, where: Path = run_dir, keep: int = args.max_save_num) -> None:
        """A checkpoint of `step` in `where` (the run folder's checkpoints, or the sentinel's rollback points)."""
        state = {
            "step": step,
            "prompts_drawn": (step + course.prompt_offset) * args.rollout_batch_size,
            "num_prompts": len(prompts),
            "prompts_fingerprint": fingerprint,
            **course.state(),
        }

        def write(folder: Path) -> None:
            roles.on_learners("save_checkpoint", str(folder))
            if args.asynchronous and pending is not None:
                # The next step's rollout was sampled from the weights before this step's update,
                # which no checkpoint holds: keep the rollout itself, so a resumed run learns from it.
                pending.finish(roles)
                save_pending_rollout(folder, pending.saved())

        try:
            save_checkpoint(where, step, state, write, keep)
        except CheckpointSaveError as failed:
            if isinstance(failed.__cause__, (LearnersLost, RoleFailed)):
                raise failed.__cause__ from None  # restarted learners save it again as they replay the step
            logger.warning("%s; the run goes on, and saves again at the next --save_steps", failed)

    if not resume_from and 0 not in run_log.steps_logged:  # (logged before the learners were restarted)
        run_log.log_eval(0, evaluate(0))
    if sentinel is not None and not complete_checkpoints(run_dir / ROLLBACK_DIR):
        checkpoint(done_steps, run_dir / ROLLBACK_DIR, ROLLBACK_KEEP)  # a non-finite value may fire at once
    saved_rollout = load_pending_rollout(resume_from) if resume_from else None
    pending: Rollout | None = Rollout.restored(saved_rollout) if saved_rollout else draw(done_steps + 1)
    for step in run_log.progress(range(done_steps + 1, steps + 1), total=steps, initial=done_steps):
        step_start = time.perf_counter()
        rollout = pending
        trajectories, actor_metrics, extra_indices = collect(step, rollout)
        # Asynchronous: the next rollout runs on the current weights while the learners learn.
        pending = draw(step + 1) if args.asynchronous and step < steps else None
        rollout_time = time.perf_counter() - step_start

        train_metrics = learn_and_sync(step, trajectories)
        # Queued after the sync on each actor (Ray keeps an actor's calls in order): new weights.
        eval_metrics = evaluate(step)
        watched = {**train_metrics, **actor_metrics}  # what the step computed, for the sentinel
        alarm = sentinel.check(step, watched) if sentinel is not None else None
        if pending is None and step < steps and alarm is None:
            pending = draw(step + 1)

        rollout_version = min(t.weight_version for t in trajectories)
        run_log.log_step(
            step,
            trajectories,
            rollout.indices,
            {
                **train_metrics,
                **actor_metrics,
                # The learner trained on weights after step - 1 updates.
                "misc/rollout_weight_version": rollout_version,
                "misc/policy_lag": step - 1 - rollout_version,
                **roles.take_events(),
                "misc/rollout_time": rollout_time,
                "misc/step_time": time.perf_counter() - step_start,
                # A running total: a rollback forgets the rows after its point, and a count kept in them with it.
                **({"misc/rollbacks": float(course.rollbacks)} if sentinel is not None else {}),
                **eval_metrics,
            },
            extra_indices,
        )
        if alarm is not None:  # logged first, for the record; the rollback forgets it
            raise Collapse(alarm, watched)
        if args.plot:
            plot_run(run_dir)
        if (args.save_steps > 0 and step % args.save_steps == 0) or step == steps:
            checkpoint(step)
        if sentinel is not None and step % args.sentinel_keep == 0:
            checkpoint(step, run_dir / ROLLBACK_DIR, ROLLBACK_KEEP)

    roles.on_learners("save_pretrained", str(run_dir / "final_model"))
    roles.on_actors("close")


def main(args: PPOArgs, learner_cls=None, actor_cls=None) -> None:
    if args.verbose:  # every library's records on the console; otherwise oat_cpgd.console routes them
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=FORMAT)
    start = time.monotonic()
    try:
        run_dir = run(args, learner_cls, actor_cls)
    except ConfigError as err:  # found once attached to the cluster (--ray_address): a usage error, as at parse time
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except SentinelGaveUp as err:  # the run's own outcome, said in full: no traceback to read past
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(
        f"run finished: metrics in {run_dir / 'metrics.jsonl'}, curves in {run_dir / 'curves.png'}, "
        f"model in {run_dir / 'final_model'}"
    )
    print(summary(run_dir, time.monotonic() - start, args.verbose))
