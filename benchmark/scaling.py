"""How a step's cost grows: oat_cpgd's seconds per step and their phases against samples per prompt,
response length, model size and learner ranks.

    python benchmark/scaling.py [--axes samples length model ranks] [--steps 6] [--warmup 2]
        [--max_points N] [--show]

Every point is `run_grpo` on benchmark/step_time.py's job (8 GSM8K prompts a step, lr 1e-3 constant, the
share-of-7s reward, one optimizer step per rollout), changing one thing from its axis's base, in
micro-batches of 64 on the tiny model's axes and of 8 on the two that reach SmolLM2 (its fastest on
this machine, docs/RESULTS.md):
- samples: K = 4, 8, 16 responses a prompt (the tiny model, 32 new tokens);
- length: at most 32, 64, 128, 256, 512 new tokens (SmolLM2-135M-Instruct, K 8); responses may stop
  before the limit, so the slope is taken against the mean length generated;
- model: the tiny model, a mid-size one built the same way (hidden 512, 8 layers) and SmolLM2-135M
  (K 8, 64 new tokens), against parameter count;
- ranks: 1 and 2 learner ranks (--gpus on a CPU; the tiny model, K 8, 32 tokens). On 2 cores the
  ranks share the actor's cores, so no speed-up is expected here: the point is what a second rank costs.
The phases, medians over the steps after --warmup: generate (the engine), score (the oracle), transfer
(the rest of the rollout: Ray, batching), learn, sync (the weight push), check (the sync check's wait),
other (the step's remainder).

Each axis's slope is the least-squares exponent b of time ~ x^b over its points (log-log): sublinear
below 0.9, linear to 1.1, worse above; given for the step and each phase, naming the phase that grows
fastest. Points are cached by (axis, value) in docs/scaling.json (committed, like the stability map:
the SmolLM2 points take an hour), so the curves are built over sittings; `--show` prints the tables
and draws docs/scaling.png from the JSON alone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import step_time  # this script's folder is on sys.path
from generation_throughput import model_path
from stability_map import commit

REPO = Path(__file__).resolve().parents[1]
JSON = REPO / "docs" / "scaling.json"
PNG = REPO / "docs" / "scaling.png"
MID_MODEL = {"hidden_size": 512, "intermediate_size": 1376, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4}
AXES = {
    "samples": (4, 8, 16),
    "length": (32, 64, 128, 256, 512),
    "model": ("tiny", "mid", "smollm2"),
    "ranks": (1, 2),
}
BASE = {"model": "tiny", "samples": 8, "new_tokens": 32, "ranks": 1, "micro_batch": 64}
AXIS_BASE = {"length": {"model": "smollm2", "micro_batch": 8}, "model": {"new_tokens": 64, "micro_batch": 8}}
PHASES = ("generate", "score", "transfer", "learn", "sync", "check", "other")


def point_config(axis: str, value) -> dict:
    config = BASE | AXIS_BASE.get(axis, {})
    key = {"samples": "samples", "length": "new_tokens", "model": "model", "ranks": "ranks"}[axis]
    return config | {key: value}


def model_folder(name: str) -> str:
    if name == "mid":
        from oat_cpgd.models.tiny import build_tiny_model

        return str(build_tiny_model(step_time.CACHE / "test_models" / "mid", **MID_MODEL))
    return model_path(name)


def parameter_count(folder: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def phases(run: dict, warmup: int) -> dict:
    """Medians of each phase over the timed steps; `other` is the step's time outside every phase."""
    steps = range(warmup, len(run["step"]))
    split = {
        "generate": [run["engine"][i] for i in steps],
        "score": [run["score"][i] for i in steps],
        "transfer": [run["generate"][i] - run["engine"][i] - run["score"][i] for i in steps],
        "learn": [run["learn"][i] for i in steps],
        "sync": [run["sync"][i] for i in steps],
        "check": [run["check"][i] for i in steps],
    }
    split["other"] = [run["step"][i] - sum(split[name][n] for name in split) for n, i in enumerate(steps)]
    return {"step": statistics.median(run["step"][i] for i in steps)} | {
        name: statistics.median(values) for name, values in split.items()
    }


def measure(axis: str, value, steps: int, warmup: int) -> dict:
    config = point_config(axis, value)
    folder = model_folder(config["model"])
    out = step_time.OUT_DIR / "scaling" / f"{axis}-{value}"
    out.mkdir(parents=True, exist_ok=True)
    setting = step_time.Setting("oat", config["micro_batch"])
    start = time.perf_counter()
    run = step_time.run_oat(
        folder, setting, steps, config["new_tokens"], out, samples=config["samples"], ranks=config["ranks"]
    )
    return {
        "axis": axis,
        "value": value,
        "config": config,
        "parameters": parameter_count(folder),
        "response_len": statistics.mean(run["length"][warmup:]),
        "seconds": phases(run, warmup),
        "steps": steps,
        "warmup": warmup,
        "wall": time.perf_counter() - start,
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit(),
    }


def same_run(points: list[dict], config: dict) -> dict | None:
    """A point already measured in the same configuration on another axis (SmolLM2 at 64 tokens is on
    both the length and the model axis): its run serves both."""
    return next((point for point in points if point["config"] == config), None)


def x_of(point: dict) -> float:
    """What the axis's slope is taken against."""
    axis = point["axis"]
    if axis == "length":
        return point["response_len"]
    if axis == "model":
        return point["parameters"]
    return point["config"][axis]


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares b of y ~ a * x^b in log-log; None without two distinct x or with a time <= 0."""
    if len(set(xs)) < 2 or min(ys) <= 0:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def growth(b: float | None) -> str:
    if b is None:
        return "-"
    return "sublinear" if b < 0.9 else "linear" if b <= 1.1 else "worse than linear"


def slopes(points: list[dict]) -> dict:
    """Per phase (and the step): the exponent over the axis's points, and the phase that grows fastest
    among those that take at least 5% of the largest point's step (a tiny phase's ratio is noise), if
    any grows."""
    points = sorted(points, key=x_of)
    xs = [x_of(p) for p in points]
    result = {name: exponent(xs, [p["seconds"][name] for p in points]) for name in ("step", *PHASES)}
    largest = points[-1]["seconds"]
    weighty = [name for name in PHASES if largest[name] >= 0.05 * largest["step"] and result[name] is not None]
    fastest = max(weighty, key=lambda name: result[name]) if weighty else None
    result["fastest"] = fastest if fastest and result[fastest] > 0 else None  # None: nothing grows
    return result


def load() -> list[dict]:
    return json.loads(JSON.read_text())["points"] if JSON.exists() else []


def save(points: list[dict]) -> None:
    JSON.write_text(json.dumps({"points": points}, indent=1) + "\n")


def print_tables(points: list[dict]) -> None:
    for axis in AXES:
        mine = sorted((p for p in points if p["axis"] == axis), key=x_of)
        if not mine:
            continue
        print(f"\n{axis}: median seconds per step and per phase")
        print(f"{'value':>8} {'x':>10} {'step':>7} " + " ".join(f"{name:>8}" for name in PHASES))
        for point in mine:
            cells = " ".join(f"{point['seconds'][name]:8.3f}" for name in PHASES)
            print(f"{point['value']!s:>8} {x_of(point):10.4g} {point['seconds']['step']:7.2f} {cells}")
        fit = slopes(mine)
        if fit["step"] is None:
            continue
        described = ", ".join(f"{name} {fit[name]:.2f}" for name in PHASES if fit[name] is not None)
        print(f"  exponent b (time ~ x^b): step {fit['step']:.2f} ({growth(fit['step'])}); {described}")
        print(f"  grows fastest: {fit['fastest'] or 'nothing (every phase that weighs holds or shrinks)'}")


def plot(points: list[dict]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axes_present = [axis for axis in AXES if any(p["axis"] == axis for p in points)]
    figure = Figure(figsize=(4.5 * max(len(axes_present), 1), 4))
    for index, axis in enumerate(axes_present):
        mine = sorted((p for p in points if p["axis"] == axis), key=x_of)
        panel = figure.add_subplot(1, len(axes_present), index + 1)
        xs = [x_of(p) for p in mine]
        for name in ("step", *PHASES):
            ys = [p["seconds"][name] for p in mine]
            if max(ys) > 0:
                panel.plot(xs, ys, marker="o", label=name, linewidth=2.5 if name == "step" else 1)
        panel.set_xscale("log")
        panel.set_yscale("log")
        panel.set_xlabel(
            {"samples": "samples per prompt", "length": "mean response tokens", "model": "parameters"}.get(axis, axis)
        )
        panel.set_ylabel("median s")
        panel.set_title(axis)
    if axes_present:
        figure.axes[0].legend(fontsize=7)
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(PNG, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--axes", nargs="+", choices=list(AXES), default=list(AXES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max_points", type=int, default=0, help="stop after this many new points (0: all)")
    parser.add_argument("--show", action="store_true", help="print and draw from the JSON only")
    options = parser.parse_args()
    if options.steps <= options.warmup:
        parser.error(f"--steps {options.steps} leaves no step to time after --warmup {options.warmup}")
    points = load()
    if not options.show:
        done = {(p["axis"], p["value"]) for p in points}
        todo = [(axis, value) for axis in options.axes for value in AXES[axis] if (axis, value) not in done]
        for count, (axis, value) in enumerate(todo[: options.max_points or None], 1):
            print(f"[{count}/{len(todo)}] {axis} = {value}", flush=True)
            twin = same_run(points, point_config(axis, value))
            points.append(
                twin | {"axis": axis, "value": value} if twin else measure(axis, value, options.steps, options.warmup)
            )
            save(points)  # each point as soon as it is measured
    print_tables(points)
    if points:
        plot(points)
        print(f"\nwrote {PNG}; every point: {JSON}", file=sys.stderr)


if __name__ == "__main__":
    main()
