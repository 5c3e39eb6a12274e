"""Evaluate a saved model without training: `python -m oat_cpgd.experiment.evaluate --pretrain MODEL ...`.

Same eval flags, prompts and metrics as during training; writes `<save_path>/<run name>/eval/step_0.json`
(per-question results) and `metrics.json`, and prints a table.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray
from transformers import AutoTokenizer

from oat_cpgd.actors import Actor
from oat_cpgd.args import PPOArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.cluster import cluster_nodes, ray_session, reserve, spawn_actors
from oat_cpgd.console import Console, logs_line
from oat_cpgd.evaluation import load_eval_sets, metrics_table, run_evaluation, write_eval_results
from oat_cpgd.placement import actors_only_placement
from oat_cpgd.roles import Roles


def evaluate(args: PPOArgs) -> Path:
    """Answer the eval benchmarks with --pretrain; returns the run folder. Without --verbose, what the
    libraries print goes to its logs/ (oat_cpgd.console)."""
    run_dir = Path(args.save_path) / args.wb_run_name
    with Console(run_dir, args.verbose):
        eval_sets = load_eval_sets(args, AutoTokenizer.from_pretrained(args.tokenizer))
        with ray_session(args.ray_address, log_to_driver=args.verbose):
            # No learners: every GPU serves an engine, each on its own GPUs.
            reservation = reserve(actors_only_placement(cluster_nodes(), args))
            try:
                actors = spawn_actors(args, reservation, Actor)
                try:
                    roles = Roles(args, actors, [], run_dir, spawn_learners=None)  # restarts an actor that dies
                    metrics, per_bench = run_evaluation(roles, eval_sets, args)
                finally:
                    ray.get([actor.close.remote() for actor in actors])
            finally:
                reservation.release()
    write_eval_results(run_dir, 0, per_bench)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(metrics_table(metrics))
    return run_dir


if __name__ == "__main__":
    args = parse_args(PPOArgs, plan=actors_only_placement)
    run_dir = evaluate(args)
    print(f"eval results in {run_dir / 'eval' / 'step_0.json'}, metrics in {run_dir / 'metrics.json'}")
    print(logs_line(run_dir, args.verbose))
