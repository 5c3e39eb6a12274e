"""The stability map: where each group method stays stable, by learning rate x updates per rollout.

    python benchmark/stability_map.py [--methods ...] [--lrs 1e-4 3e-4 1e-3] [--updates 1 4 16]
                                      [--seeds 0 1 2] [--steps 15] [--max_runs N] [--show]

Every run trains the demo's warm start (`make demo`: the tiny model fine-tuned on "What is 47 + 5?",
3 answers in 10 boxed; held-out accuracy starts at 0.00) on the demo's training questions through the
real loop, with the demo's flags (16 questions x 8 samples a step) and then the cell's:
- the learning rate, constant: the demo's 1e-4 to ten times it;
- updates per rollout, epochs x mini-batches: 1 (1 x one batch of 128 responses), 4 (1 x 4 of 32,
  the demo's) or 16 (4 x 4 of 32; all but the first update off-policy).
The methods are every group method of the registry, each with its own defaults, and `grpo_noclip`
(GRPO's loss with the ratio clip opened to [1e-6, 1e9]: importance-weighted policy gradient).

A run records its held-out accuracy at the end (greedy, the demo's 200 questions), the first step of a
reward collapse, an entropy collapse and a length collapse (as benchmark/stability.py defines them),
whether it crashed, and its largest policy drift. A cell's seeds collapse when the reward collapses or
the run crashes; entropy and length collapses are counted apart, since a policy that has learned the
task may sample nearly greedily.

Runs are cached by (method, lr, updates, seed, steps) in docs/stability_map.json, which is committed:
the map is built over several sittings (each run is written as soon as it ends; seeds outermost, so a
partial map covers every cell at one seed first) and extended by new flags. Writes the heat-maps
(docs/stability_map.png: one panel per method, cells coloured by the median held-out accuracy,
annotated with collapses out of the seeds run) and prints the summary table: per method, the stable
cell with the largest lr x updates, and every cell. `--show` prints them from the JSON, running nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from stability import (  # benchmark/stability.py (this script's folder is on sys.path)
    METHODS,
    REPO,
    SIGNALS,
    collapses,
    demo_task,
    train_run,
)

MAP_JSON = REPO / "docs" / "stability_map.json"
MAP_PNG = REPO / "docs" / "stability_map.png"
LRS = (1e-4, 3e-4, 1e-3)
UPDATES = {1: (1, 128), 4: (1, 32), 16: (4, 32)}
"""Optimizer updates per rollout of 128 responses -> (epochs, --train_batch_size in responses)."""
MICRO_BATCH = 32
"""--train_batch_size_per_device in every cell: the same forward passes, only the number of updates changes."""


def cell_flags(lr: float, updates: int) -> list[str]:
    epochs, batch = UPDATES[updates]
    return [
        f"--learning_rate={lr}",
        f"--num_ppo_epochs={epochs}",
        f"--train_batch_size={batch}",
        f"--train_batch_size_per_device={MICRO_BATCH}",
    ]


def run_key(method: str, lr: float, updates: int, seed: int, steps: int) -> str:
    return f"{method} lr={lr:g} updates={updates} seed={seed} steps={steps}"


def commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()


def rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def record(method: str, lr: float, updates: int, seed: int, steps: int, model: Path, data: Path, out: Path) -> dict:
    """One run of the map, as the JSON keeps it."""
    module, flags = METHODS[method]
    name = f"{method}-lr{lr:g}-u{updates}-seed{seed}"
    shutil.rmtree(out / name, ignore_errors=True)  # what an interrupted sitting left of this run
    run = train_run(name, module, cell_flags(lr, updates) + flags, seed, steps, model, data, out)
    shutil.rmtree(out / name)  # its checkpoint and model: 216 of them would fill the disk
    series = {key: rounded(run[key]) for key in ("reward", "entropy", "response_len", "policy_drift", *SIGNALS)}
    return {
        "key": run_key(method, lr, updates, seed, steps),
        "method": method,
        "lr": lr,
        "updates": updates,
        "seed": seed,
        "steps": steps,
        "steps_logged": len(run["reward"]),
        "crashed": run["crashed"],
        "accuracy_before": run["accuracy_before"],
        "accuracy_after": run["accuracy_after"],
        "collapse_step": collapses(run) if run["reward"] else {"reward": None, "entropy": None, "length": None},
        "policy_drift_max": max(run["policy_drift"], default=float("nan")),
        "wall": round(run["wall"], 1),
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit(),
        **series,
    }


def collapsed(run: dict) -> bool:
    """The map's collapse: the training reward fell to 10% of its peak after it, or the run crashed."""
    return run["crashed"] or run["collapse_step"]["reward"] is not None


def load(path: Path) -> dict[str, dict]:
    return {run["key"]: run for run in json.loads(path.read_text())["runs"]} if path.exists() else {}


def save(path: Path, runs: dict[str, dict]) -> None:
    ordered = sorted(runs.values(), key=lambda r: (r["method"], r["lr"], r["updates"], r["seed"], r["steps"]))
    text = json.dumps({"methods": {m: METHODS[m][1] for m in METHODS}, "updates": UPDATES, "runs": ordered}, indent=1)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)  # a sitting cut short never leaves half a file


def cell_runs(runs: dict[str, dict], method: str, lr: float, updates: int, steps: int) -> list[dict]:
    found = [
        r for r in runs.values() if (r["method"], r["lr"], r["updates"], r["steps"]) == (method, lr, updates, steps)
    ]
    return sorted(found, key=lambda r: r["seed"])


def cell_text(cell: list[dict]) -> str:
    """'0.78 (0/3)': the median final held-out accuracy, and the seeds collapsed out of those run."""
    if not cell:
        return "-"
    accuracy = statistics.median(r["accuracy_after"] for r in cell)
    return f"{accuracy:.2f} ({sum(map(collapsed, cell))}/{len(cell)})"


def stable_frontier(runs: dict[str, dict], method: str, lrs, updates, steps: int) -> tuple[float, int] | None:
    """The cell with the largest lr x updates (then the largest lr) in which no seed collapsed; None if none."""
    stable = [
        (lr, u)
        for lr in lrs
        for u in updates
        if (cell := cell_runs(runs, method, lr, u, steps)) and not any(map(collapsed, cell))
    ]
    return max(stable, key=lambda c: (c[0] * c[1], c[0]), default=None)


PAPER_BASELINES = ("grpo", "reinforce_pp", "rloo")
"""The ratio-based methods CPGD's paper (arXiv 2505.12504) says collapse where CPGD does not."""


def claim_verdict(cpgd: list[dict], baselines: dict[str, list[dict]]) -> str:
    """What one cell says of the paper's claim: CPGD collapses in a smaller share of its seeds than each of
    the paper's baselines (supports), in a larger one than any (against), or neither (the collapse steps
    then compared). Shares, not counts: a map being built may have run more seeds of one method."""
    ours = sum(map(collapsed, cpgd)) / len(cpgd)
    theirs = [sum(map(collapsed, cell)) / len(cell) for cell in baselines.values()]
    if ours == 0 and not any(theirs):
        return "no collapse: no test of the claim"
    if ours < min(theirs):
        return "supports"
    if ours > max(theirs):
        return "against"
    ours_steps = [r["collapse_step"]["reward"] for r in cpgd]
    theirs_steps = [r["collapse_step"]["reward"] for cell in baselines.values() for r in cell]
    if None in ours_steps + theirs_steps:
        return "neither: CPGD collapses as often as one of them"
    ours_step, theirs_step = statistics.median(ours_steps), statistics.median(theirs_steps)
    later = "later" if ours_step > theirs_step else "not later"
    return f"neither: all collapse, CPGD {later} (median step {ours_step:g} against {theirs_step:g})"


def print_claim(runs: dict[str, dict], lrs, updates, steps: int) -> None:
    """The paper's claim, cell by cell."""
    print(
        f"\nCPGD's claim, cell by cell: CPGD against {', '.join(PAPER_BASELINES)}; collapsed seeds / seeds "
        "(median held-out) and the reward's collapse steps"
    )
    for lr in lrs:
        for u in updates:
            cells = {m: cell_runs(runs, m, lr, u, steps) for m in ("cpgd", *PAPER_BASELINES)}
            if not all(cells.values()):
                continue
            texts = [
                f"{m} {cell_text(c)} at {','.join(str(r['collapse_step']['reward'] or '-') for r in c)}"
                for m, c in cells.items()
            ]
            verdict = claim_verdict(cells["cpgd"], {m: cells[m] for m in PAPER_BASELINES})
            print(f"lr {lr:g} x {u:<2}: {verdict}; " + "; ".join(texts))


def print_tables(runs: dict[str, dict], methods, lrs, updates, seeds, steps: int) -> None:
    done = [r for r in runs.values() if r["steps"] == steps]
    print(
        f"\nstability map: {steps} steps, 16 prompts x 8 samples; {len(done)} runs of "
        f"{len(methods) * len(lrs) * len(updates) * len(seeds)} ({len(methods)} methods x {len(lrs)} lr x "
        f"{len(updates)} updates x {len(seeds)} seeds). Cell: median final held-out accuracy (before: 0.00), "
        "(runs whose reward collapsed or that crashed / runs)."
    )
    print(
        "\nmethod       | stable cells | largest stable lr x updates | its median held-out | best cell (median held-out)"
    )
    for method in methods:
        cells = {(lr, u): cell_runs(runs, method, lr, u, steps) for lr in lrs for u in updates}
        stable = sum(bool(c) and not any(map(collapsed, c)) for c in cells.values())
        frontier = stable_frontier(runs, method, lrs, updates, steps)
        frontier_text = "none" if frontier is None else f"lr {frontier[0]:g} x {frontier[1]}"
        frontier_acc = "-" if frontier is None else cell_text(cells[frontier]).split()[0]
        ran = {c: v for c, v in cells.items() if v}
        best = max(ran, key=lambda c: statistics.median(r["accuracy_after"] for r in ran[c]), default=None)
        best_text = "-" if best is None else f"lr {best[0]:g} x {best[1]}: {cell_text(ran[best]).split()[0]}"
        print(
            f"{method:12} | {stable}/{sum(map(bool, cells.values()))} | {frontier_text} | {frontier_acc} | {best_text}"
        )
    print("\ncell (lr x updates) | " + " | ".join(methods))
    for lr in lrs:
        for u in updates:
            texts = [cell_text(cell_runs(runs, m, lr, u, steps)) for m in methods]
            print(f"{lr:g} x {u:<2}           | " + " | ".join(texts))
    print_claim(runs, lrs, updates, steps)
    kinds = {kind: sum(r["collapse_step"][kind] is not None for r in done) for kind in ("entropy", "length")}
    print(
        f"\nentropy collapses (below 0.05 nats) in {kinds['entropy']} runs, length collapses in {kinds['length']}; "
        f"crashed: {sum(r['crashed'] for r in done)}. Every run's series: {MAP_JSON.relative_to(REPO)}"
    )


def plot(runs: dict[str, dict], methods, lrs, updates, steps: int, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 4
    rows = -(-len(methods) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows))
    axes = figure.subplots(rows, columns, squeeze=False).flat
    image = None
    for index, (method, ax) in enumerate(zip(methods, axes, strict=False)):
        grid = [[float("nan")] * len(updates) for _ in lrs]
        for i, lr in enumerate(lrs):
            for j, u in enumerate(updates):
                cell = cell_runs(runs, method, lr, u, steps)
                if cell:
                    grid[i][j] = statistics.median(r["accuracy_after"] for r in cell)
                    collapses_text = f"{sum(map(collapsed, cell))}/{len(cell)}"
                    colour = "white" if grid[i][j] < 0.5 else "black"  # readable on viridis' dark and light ends
                    ax.text(
                        j, i, f"{grid[i][j]:.2f}\n{collapses_text}", ha="center", va="center", fontsize=9, color=colour
                    )
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set(title=method, xticks=range(len(updates)), yticks=range(len(lrs)))
        ax.set_xticklabels([str(u) for u in updates])
        ax.set_yticklabels([f"{lr:g}" for lr in lrs])
        ax.set_xlabel("updates per rollout")
        if index % columns == 0:
            ax.set_ylabel("learning rate")
    for ax in list(axes):  # panels beyond the methods
        ax.set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=figure.axes, shrink=0.6, label="median held-out accuracy at the end")
    figure.suptitle(f"median final held-out accuracy; collapsed seeds / seeds ({steps} steps)")
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    parser.add_argument("--updates", type=int, nargs="+", default=list(UPDATES), choices=list(UPDATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument(
        "--max_runs", type=int, default=0, help="stop after this many new runs (0: run every missing one)"
    )
    parser.add_argument("--show", action="store_true", help="print the tables and draw the map from the JSON only")
    options = parser.parse_args()
    runs = load(MAP_JSON)
    todo = [
        (method, lr, u, seed)
        for seed in options.seeds  # seeds outermost: a partial map covers every cell at one seed first
        for lr in options.lrs
        for u in options.updates
        for method in options.methods
        if run_key(method, lr, u, seed, options.steps) not in runs
    ]
    if options.max_runs:
        todo = todo[: options.max_runs]
    if todo and not options.show:
        model, data, out = demo_task(REPO / ".cache" / "bench" / "stability_map", fresh=False)  # runs go one by one
        for n, job in enumerate(todo, start=1):
            run = record(*job, options.steps, model, data, out)
            runs[run["key"]] = run
            save(MAP_JSON, runs)  # at once: a sitting cut short keeps every run it finished
            print(
                f"[{n}/{len(todo)}] {run['key']}: held-out {run['accuracy_after']:.2f}, "
                f"collapsed: {collapsed(run)}, {run['wall']:.0f} s",
                flush=True,
            )
    print_tables(runs, options.methods, options.lrs, options.updates, options.seeds, options.steps)
    plot(runs, options.methods, options.lrs, options.updates, options.steps, MAP_PNG)
    print(f"wrote {MAP_PNG.relative_to(REPO)}")


if __name__ == "__main__":
    main()
