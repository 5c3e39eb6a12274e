"""What a run leaves behind: config.json, metrics.jsonl, samples.jsonl, wandb, a progress bar."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from oat_cpgd.args import Args
from oat_cpgd.types import Trajectory


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/inf
    return value


class RunLog:
    """Appends one JSON line per learning step to `<save_path>/<run name>/metrics.jsonl`."""

    def __init__(self, run_dir: Path, args: Args, dropped_prompts: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.args = args
        (self.run_dir / "config.json").write_text(args.to_json())
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        self.samples_file = open(self.run_dir / "samples.jsonl", "a")
        self.dropped_prompts = dropped_prompts
        self.bar = None
        self.wandb = None
        if args.use_wb:
            import wandb

            self.wandb = wandb.init(
                project=args.wb_project,
                entity=args.wb_org,
                group=args.wb_group,
                name=args.wb_run_name,
                config=args.to_dict(),
                dir=str(self.run_dir),
            )

    def progress(self, steps: Iterable[int]) -> Iterator[int]:
        self.bar = tqdm(steps, desc="steps", unit="step", dynamic_ncols=True)
        return iter(self.bar)

    def log_step(self, step: int, trajectories: list[Trajectory], prompt_indices: list[int], metrics: dict) -> None:
        row = {"step": step, **{k: _jsonable(float(v)) for k, v in metrics.items()}}
        row["data/dropped_prompts"] = self.dropped_prompts
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        examples = [
            {"prompt": t.prompt, "response": t.response, "reward": t.reward, "info": t.info}
            for t in trajectories[: self.args.log_samples]
        ]
        self.samples_file.write(
            json.dumps({"step": step, "prompt_indices": prompt_indices, "examples": examples}, default=str) + "\n"
        )
        self.samples_file.flush()
        if self.wandb is not None:
            self.wandb.log(row, step=step)
        if self.bar is not None:
            reward = metrics.get("train/reward_mean", metrics.get("actor/reward_mean", float("nan")))
            self.bar.set_postfix(reward=f"{reward:.3f}", step_time=f"{metrics.get('misc/step_time', 0):.1f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.metrics_file.close()
        self.samples_file.close()
        if self.wandb is not None:
            self.wandb.finish()
