"""What a run leaves behind: config.json, metrics.jsonl, samples.jsonl, wandb, TensorBoard, a progress bar,
and the summary printed at its end."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from oat_cpgd.args import Args
from oat_cpgd.console import Console, logs_line
from oat_cpgd.evaluation import AVERAGE
from oat_cpgd.plot import read_rows
from oat_cpgd.types import Trajectory

RESTARTS = ("actor_restarts", "learner_restarts", "steps_replayed")
"""The misc/ metrics of a run that healed itself, summed in its summary."""
EVAL_ACCURACY = f"eval/{AVERAGE}/accuracy"
"""The eval accuracy averaged over the benchmarks, which the progress bar shows."""


def keep_steps_up_to(path: Path, step: int) -> None:
    """Drop the JSON lines of `path` whose step is after `step` (and a torn last line)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by the crash
    path.write_text("".join(f"{line}\n" for line in kept))


def refuse_a_used_run_dir(run_dir: Path) -> None:
    """A fresh run does not write into another run's folder."""
    if (Path(run_dir) / "metrics.jsonl").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run: continue it with --resume_dir {run_dir}, or pick another --wb-run-name"
        )


class RunLog:
    """Appends one JSON line per learning step to `<save_path>/<run name>/metrics.jsonl`.

    The same rows go to wandb (--use_wb) and, as scalars at their step, to TensorBoard event files in
    `<run dir>/tb/` (--use_tb).
    """

    def __init__(
        self,
        run_dir: Path,
        args: Args,
        dropped_prompts: int = 0,
        resume_step: int | None = None,
        console: Console | None = None,
    ) -> None:
        """`resume_step`: continuing a run from that step's checkpoint; later rows (of the crashed run) go.
        `console`: where the progress bar goes, and whose roles' warnings each step shows (default: stderr).

        A resumed run appends a new TensorBoard event file to `tb/`, which hides the crashed run's events
        after `resume_step` (TensorBoard's purge_step), so each step shows once, as resumed.
        """
        self.run_dir = Path(run_dir)
        if resume_step is None:
            refuse_a_used_run_dir(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.args = args
        if resume_step is None:  # a resumed run keeps the original's configuration
            (self.run_dir / "config.json").write_text(args.to_json())
        else:
            self._forget_steps_after(resume_step)
        self._open()
        self.dropped_prompts = dropped_prompts
        self.console = console
        self.bar = None
        self.eval_accuracy: float | None = None  # the latest, shown on the bar until the next evaluation
        self.tensorboard = None
        if args.use_tb:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(
                str(self.run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1
            )
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

    def _forget_steps_after(self, step: int) -> None:
        for name in ("metrics.jsonl", "samples.jsonl"):
            keep_steps_up_to(self.run_dir / name, step)

    def _open(self) -> None:
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")
        self.samples_file = open(self.run_dir / "samples.jsonl", "a")
        self.steps_logged = {row["step"] for row in read_rows(self.run_dir)}
        """The steps with a row in metrics.jsonl (0: the evaluation before the first step)."""

    def rewind(self, step: int) -> int:
        """Forget the steps after `step` (the loop replays them from that step's checkpoint); returns
        how many were logged. TensorBoard shows them once more, as replayed; wandb keeps both."""
        replayed = sum(logged > step for logged in self.steps_logged)
        self.metrics_file.close()
        self.samples_file.close()
        self._forget_steps_after(step)
        self._open()
        if self.tensorboard is not None:  # a new event file hides the forgotten steps' events (as a resume)
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard.close()
            self.tensorboard = SummaryWriter(str(self.run_dir / "tb"), purge_step=step + 1)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        return replayed

    def progress(self, steps: Iterable[int], total: int, initial: int = 0) -> Iterator[int]:
        stream = self.console.stream if self.console else None  # None: tqdm's default, stderr
        self.bar = tqdm(steps, desc="steps", unit="step", dynamic_ncols=True, total=total, initial=initial, file=stream)
        return iter(self.bar)

    def log_step(
        self,
        step: int,
        trajectories: list[Trajectory],
        prompt_indices: list[int],
        metrics: dict,
        extra_prompt_indices: list[int] | None = None,
    ) -> None:
        """`prompt_indices`: the step's draw; `extra_prompt_indices`: dynamic sampling's extra draws."""
        # A NaN/inf metric is written as NaN/Infinity (Python's json reads them back), never as null.
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        row["data/dropped_prompts"] = self.dropped_prompts
        self._write_metrics(row)
        examples = [
            {"prompt": t.prompt, "response": t.response, "reward": t.reward, "info": t.info}
            for t in trajectories[: self.args.log_samples]
        ]
        drawn = {"step": step, "prompt_indices": prompt_indices}
        if extra_prompt_indices:
            drawn["extra_prompt_indices"] = extra_prompt_indices
        self.samples_file.write(json.dumps({**drawn, "examples": examples}, default=str) + "\n")
        self.samples_file.flush()
        if self.bar is not None:
            reward = metrics.get("train/reward_mean", metrics.get("actor/reward_mean", float("nan")))
            postfix = {"reward": f"{reward:.3f}", "step_time": f"{metrics.get('misc/step_time', 0):.1f}s"}
            if self.eval_accuracy is not None:
                postfix["eval_acc"] = f"{self.eval_accuracy:.3f}"
            self.bar.set_postfix(postfix)
        if self.console is not None:
            self.console.poll()

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        """A row of eval metrics alone (the evaluation before the first step)."""
        if metrics:
            self._write_metrics({"step": step, **metrics})

    def _write_metrics(self, row: dict) -> None:
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        self.steps_logged.add(row["step"])
        self.eval_accuracy = row.get(EVAL_ACCURACY, self.eval_accuracy)
        if self.tensorboard is not None:
            for name, value in row.items():
                if name != "step":
                    self.tensorboard.add_scalar(name, value, global_step=row["step"])
            self.tensorboard.flush()  # as metrics.jsonl: a crash loses no logged step
        if self.wandb is not None:
            self.wandb.log(row, step=row["step"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.metrics_file.close()
        self.samples_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def summary(run_dir: Path, seconds: float, verbose: bool = False) -> str:
    """The lines printed at the end of a run: its steps and time, the eval accuracy from the first
    evaluation to the last, the run folder and its logs."""
    rows = read_rows(run_dir)
    last_step = max((row["step"] for row in rows), default=0)
    lines = [f"{last_step} steps in {seconds:.0f} s"]
    evals = [(row["step"], row[EVAL_ACCURACY]) for row in rows if EVAL_ACCURACY in row]
    if evals:
        (first, before), (last, after) = evals[0], evals[-1]
        lines[0] += f"; eval accuracy {before:.1%} at step {first} -> {after:.1%} at step {last}"
    restarts = {name: int(sum(row.get(f"misc/{name}", 0) for row in rows)) for name in RESTARTS}
    if any(restarts.values()):
        lines.append("healed: " + ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in restarts.items()))
    lines.append(f"run folder: {Path(run_dir).absolute()}")
    lines.append(logs_line(run_dir, verbose))
    return "\n".join(lines)
