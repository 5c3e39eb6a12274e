"""Curves of a run against learning steps: `python -m oat_cpgd.plot RUN_DIR` draws RUN_DIR/curves.png.

Four panels from RUN_DIR/metrics.jsonl: reward, eval accuracy per benchmark, response length and
policy drift; a run with --env has a fifth, its episodes' turns and tool calls. A panel whose metrics
were never logged says "no data".
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Series = dict[str, tuple[list[int], list[float]]]
EPISODE_KEYS = ("actor/turns", "actor/tool_calls")
"""Per training episode, logged by runs with --env (tool calls: by the `python` tool)."""


def read_rows(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that logged a finite `key` (a NaN/inf value is skipped)."""
    points = [(row["step"], row[key]) for row in rows if row.get(key) is not None and math.isfinite(row[key])]
    return [step for step, _ in points], [value for _, value in points]


def panel_series(rows: list[dict]) -> dict[str, Series]:
    """Panel title -> label -> (steps, values); an empty panel has no series."""
    reward_key = "train/reward_mean" if series(rows, "train/reward_mean")[0] else "actor/reward_mean"
    accuracy_keys = dict.fromkeys(
        key for row in rows for key in row if key.startswith("eval/") and key.endswith("/accuracy")
    )
    panels = {
        "reward": {reward_key: series(rows, reward_key)},
        "eval accuracy": {key.split("/")[1]: series(rows, key) for key in accuracy_keys},
        "response length (tokens)": {"train/response_len": series(rows, "train/response_len")},
        "policy drift": {"train/policy_drift": series(rows, "train/policy_drift")},
    }
    episode = {key: series(rows, key) for key in EPISODE_KEYS}
    if episode["actor/turns"][0]:
        panels["per episode"] = episode
    return {title: {label: s for label, s in lines.items() if s[0]} for title, lines in panels.items()}


def draw_panel(axes: Axes, title: str, lines: Series) -> None:
    axes.set_title(title)
    axes.set_xlabel("step")
    if not lines:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, color="gray")
        return
    for label, (steps, values) in lines.items():
        axes.plot(steps, values, marker=".", label=label)  # markers: a single eval point is still seen
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)


def plot_run(run_dir: str | Path) -> Path:
    """Draw `<run_dir>/curves.png` from `<run_dir>/metrics.jsonl`; returns the PNG's path."""
    run_dir = Path(run_dir)
    panels = panel_series(read_rows(run_dir))
    columns = math.ceil(len(panels) / 2)
    figure = Figure(figsize=(5.5 * columns, 8), layout="constrained")
    FigureCanvasAgg(figure)  # Agg, without pyplot's global state: works headless and in any thread
    figure.suptitle(run_dir.name)
    grid = list(figure.subplots(2, columns).flat)
    for axes, (title, lines) in zip(grid[: len(panels)], panels.items(), strict=True):
        draw_panel(axes, title, lines)
    for axes in grid[len(panels) :]:
        axes.set_axis_off()
    path = run_dir / "curves.png"
    figure.savefig(path, dpi=100)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m oat_cpgd.plot RUN_DIR")
    print(plot_run(sys.argv[1]))
