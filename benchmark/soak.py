"""A long run's resources: does anything grow step after step (memory, file descriptors, shared memory, disk)?

    python benchmark/soak.py [--steps 310] [--every 10] [--warmup 51]

GRPO on the tiny model (`python -m oat_cpgd.models.tiny`) and GSM8K's training questions with the
real gsm8k oracle (one worker process), 8 prompts x 4 samples of 16 tokens a step, one learner and
one vLLM actor, greedy evaluation on 32 test questions every 50 steps, a checkpoint every 25 steps
keeping 2: the real loop (oat_cpgd.interface.run), in this process, on a private Ray cluster.

A side thread takes a sample once the metrics row of step 1, 1 + every, 1 + 2 x every, ... is
written: then the loop is at the start of the next step's rollout, never inside an evaluation or
a checkpoint (those end steps that are multiples of 25), so every sample catches the same phase.
A sample holds:
- per role (driver; learner; actor; ray, i.e. Ray's own processes and idle workers), the summed
  RSS, open file descriptors and number of processes: a role's process and its children (the
  actor's oracle workers, vLLM's engine core when it runs apart);
- the Ray object store's bytes in use (the raylet's store stats);
- /dev/shm: the files there that the run's processes hold open or mapped (Ray's object store file,
  multiprocessing's named semaphores), their allocated bytes; and the whole file system's use and
  number of files (other users' too: on a shared machine, not the run's alone);
- the run folder's allocated bytes: checkpoints/ (bounded by --max_save_num) and the rest (logs,
  metrics, samples, evaluations: they grow with every step by design).
The table: each quantity at step 1, after warm-up (--warmup) and at the end; its growth from warm-up
to the end, sample to sample; and its trend, the growth over the same steps of a least-squares line
through every sample from warm-up on. A quantity that swings from step to step (the learner's RSS, as
its allocator takes and returns memory) makes the first noisy, so the trend is what is flagged over
5%. Writes .cache/bench/soak.json and .cache/bench/soak.png; `--table FILE` reprints a saved run's table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / ".cache" / "bench"
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
ROLE_TITLES = {"ray::Learner": "learner", "ray::Actor": "actor"}
"""How Ray titles a role's worker process ("ray::Learner.learn" while it runs that method)."""
GROWTH_LIMIT = 5.0
"""Percent: more, from warm-up to the end, is a leak to name."""
MIB = 2**20
SHM_RUN = "/dev/shm held by the run (KiB)"
LOGS = "run folder: logs, metrics (MiB)"
"""The one quantity that grows by design: a row of metrics and samples, and log lines, every step."""


def run_args(model: Path, steps: int, out: Path):
    from oat_cpgd.args import PPOArgs

    args = PPOArgs(
        critic_type="grpo",
        pretrain=str(model),
        gpus=1,
        prompt_data=str(GSM8K),
        input_key="question",
        output_key="final_answer",
        oracle="gsm8k",
        oracle_workers=1,
        num_samples=4,
        rollout_batch_size=8,
        rollout_batch_size_per_device=8,
        train_batch_size=32,
        train_batch_size_per_device=32,
        generate_max_length=16,
        prompt_max_length=256,
        learning_rate=1e-4,
        lr_scheduler="constant",
        lr_warmup_ratio=0.0,
        max_steps=steps,
        eval_steps=50,
        max_eval=32,
        eval_generate_max_length=16,
        save_steps=25,
        max_save_num=2,
        save_path=str(out),
        wb_run_name="soak",
    )
    args.resolve()
    return args


def role_of(process: psutil.Process, driver: int) -> str:
    """The role whose process is `process` or one of its ancestors; `ray` for Ray's own."""
    while process.pid != driver:
        title = (process.cmdline() or [process.name()])[0]
        for prefix, role in ROLE_TITLES.items():
            if title.startswith(prefix):
                return role
        process = process.parent()
    return "ray"


def shm_files(pid: int) -> dict[tuple[int, int], int]:
    """The /dev/shm files `pid` holds open or mapped: {(device, inode): allocated bytes}.
    Through /proc's links, which reach a file deleted since (as Ray's object store file is)."""
    links = [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                links.append(f"/proc/{pid}/map_files/{fields[0]}")
    found = {}
    for link in links:
        try:
            if link.startswith(f"/proc/{pid}/fd/") and not os.readlink(link).startswith("/dev/shm/"):
                continue
            stat = os.stat(link)
        except FileNotFoundError:  # closed or unmapped meanwhile
            continue
        found[(stat.st_dev, stat.st_ino)] = stat.st_blocks * 512
    return found


def folder_bytes(folder: Path) -> int:
    """Allocated bytes under `folder`, as `du` counts them."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # a checkpoint pruned meanwhile
                continue
    return total


def object_store_bytes() -> int:
    import ray
    from ray._private import internal_api

    state = internal_api.get_state_from_address(ray.get_runtime_context().gcs_address)
    return internal_api.get_memory_info_reply(state).store_stats.object_store_bytes_used


def sample(step: int, run_dir: Path) -> dict:
    driver = psutil.Process()
    processes = []
    shm: dict[tuple[int, int], int] = {}
    # The driver started the cluster: Ray's processes, and the roles' workers under the raylet, descend from it.
    for process in [driver, *driver.children(recursive=True)]:
        try:
            processes.append(
                {
                    "pid": process.pid,
                    "title": " ".join(process.cmdline())[:80],
                    "role": "driver" if process.pid == driver.pid else role_of(process, driver.pid),
                    "rss": process.memory_info().rss,
                    "fds": process.num_fds(),
                }
            )
            shm.update(shm_files(process.pid))
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
    roles: dict[str, dict[str, int]] = {}
    for process in processes:
        totals = roles.setdefault(process["role"], {"rss": 0, "fds": 0, "processes": 0})
        totals["rss"] += process["rss"]
        totals["fds"] += process["fds"]
        totals["processes"] += 1
    checkpoints = folder_bytes(run_dir / "checkpoints")
    return {
        "step": step,
        "time": time.time(),
        "roles": roles,
        "processes": processes,  # each one's share, to find what grows
        "object_store": object_store_bytes(),
        "shm_run": sum(shm.values()),
        "shm_total": shutil.disk_usage("/dev/shm").used,
        "shm_entries": len(os.listdir("/dev/shm")),
        "run_dir_checkpoints": checkpoints,
        "run_dir_rest": folder_bytes(run_dir) - checkpoints,
    }


def last_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    lines = metrics.read_text().splitlines()
    # The last complete row (the loop may be writing one).
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except json.JSONDecodeError:
            continue
    return 0


def sampler(marks: list[int], run_dir: Path, samples: list[dict], done: threading.Event, errors: list) -> None:
    """Appends a sample to `samples` once each step of `marks` is logged, until `done` or the last mark;
    an error goes to `errors`, for the main thread to raise."""
    try:
        for mark in marks:
            while last_step(run_dir / "metrics.jsonl") < mark:
                if done.wait(0.5):
                    return
            samples.append(sample(mark, run_dir))
    except Exception as error:
        errors.append(error)


def quantities(samples: list[dict]) -> dict[str, list[float]]:
    """Each quantity's series, in the table's units (MiB, or a count)."""
    series: dict[str, list[float]] = {}
    for role in samples[0]["roles"]:
        series[f"{role} RSS (MiB)"] = [s["roles"][role]["rss"] / MIB for s in samples]
        series[f"{role} open fds"] = [s["roles"][role]["fds"] for s in samples]
        series[f"{role} processes"] = [s["roles"][role]["processes"] for s in samples]
    for key, name in (
        ("object_store", "Ray object store (MiB)"),
        ("shm_total", "/dev/shm, whole machine (MiB)"),
        ("run_dir_checkpoints", "run folder: checkpoints (MiB)"),
        ("run_dir_rest", LOGS),
    ):
        series[name] = [s[key] / MIB for s in samples]
    # In KiB: a named semaphore (multiprocessing's locks) takes 4 KiB, so a leak of them shows.
    series[SHM_RUN] = [s["shm_run"] / 1024 for s in samples]
    series["/dev/shm files, whole machine"] = [s["shm_entries"] for s in samples]
    return series


def trend(steps: list[int], values: list[float]) -> float:
    """The growth, in % of its start, of the least-squares line through (steps, values) over those steps."""
    fit = statistics.linear_regression(steps, values)
    start = fit.intercept + fit.slope * steps[0]
    return 100 * fit.slope * (steps[-1] - steps[0]) / start if start else 0.0


def table(result: dict) -> str:
    samples, warmup = result["samples"], result["warmup"]
    steps = [s["step"] for s in samples]
    at = steps.index(warmup)
    lines = [
        f"{'quantity':40} {'step ' + str(steps[0]):>10} {'step ' + str(warmup):>10} "
        f"{'step ' + str(steps[-1]):>10} {'growth':>8} {'trend':>8}"
    ]
    for name, values in quantities(samples).items():
        start, after, end = values[0], values[at], values[-1]
        growth = 100 * (end - after) / after if after else 0.0
        fitted = trend(steps[at:], values[at:])
        flag = "  (by design)" if name == LOGS else "  <- over 5%" if fitted > GROWTH_LIMIT else ""
        lines.append(f"{name:40} {start:10.1f} {after:10.1f} {end:10.1f} {growth:7.1f}% {fitted:7.1f}%{flag}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    samples = result["samples"]
    steps = [s["step"] for s in samples]
    series = quantities(samples)
    panels = {
        "RSS (MiB)": [n for n in series if n.endswith("RSS (MiB)")],
        "open file descriptors": [n for n in series if n.endswith("open fds")],
        "processes": [n for n in series if n.endswith("processes")],
        "Ray object store (MiB)": ["Ray object store (MiB)"],
        "/dev/shm held by the run (KiB)": [SHM_RUN],
        "run folder (MiB)": ["run folder: checkpoints (MiB)", LOGS],
    }
    figure = Figure(figsize=(15, 7))
    for index, (title, names) in enumerate(panels.items()):
        axes = figure.add_subplot(2, 3, index + 1)
        for name in names:
            axes.plot(steps, series[name], marker=".", label=name.split(" (")[0])
        axes.axvline(result["warmup"], color="grey", linestyle=":", linewidth=1)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.legend(fontsize=7)
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=310)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=51, help="the sample's step that growth is measured from")
    parser.add_argument("--table", type=Path, help="print the table of a saved soak.json and exit")
    options = parser.parse_args()
    if options.table:
        print(table(json.loads(options.table.read_text())))
        return
    from oat_cpgd.interface import run
    from oat_cpgd.models.tiny import build_tiny_model

    model = build_tiny_model(REPO / ".cache" / "test_models" / "tiny")
    out = OUT_DIR / "soak_run"
    shutil.rmtree(out, ignore_errors=True)  # this benchmark's run, from last time
    args = run_args(model, options.steps, out)
    # Samples at steps 1, 1 + every, ...: never the last step, which writes the final model.
    marks = list(range(1, options.steps, options.every))
    if options.warmup not in marks:
        parser.error(f"--warmup {options.warmup} is not a sampled step (1, 1 + --every, ...)")
    samples: list[dict] = []
    errors: list[Exception] = []
    done = threading.Event()
    thread = threading.Thread(target=sampler, args=(marks, out / args.wb_run_name, samples, done, errors))
    start = time.perf_counter()
    thread.start()
    try:
        run(args)
    finally:
        done.set()
        thread.join()
    if errors:
        raise errors[0]
    result = {"warmup": options.warmup, "wall_s": time.perf_counter() - start, "samples": samples}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "soak.json").write_text(json.dumps(result, indent=1))
    plot(result, OUT_DIR / "soak.png")
    print(table(result))
    print(f"{len(samples)} samples over {result['wall_s']:.0f} s; {OUT_DIR / 'soak.json'}, {OUT_DIR / 'soak.png'}")


if __name__ == "__main__":
    main()
