"""The recipe scripts (examples/*.sh) and oat's extension example (examples/r1_zero_math.py).

The slow test runs each recipe with SMOKE=1 as the README says, after `make install` and nothing else: no
PYTHON override, no activated venv (the script must find the repository's .venv/bin/python itself); data
prepared from ../shared/data, the tiny model, one learning step on the CPU; the recipe's own flags must reach
the run next to the smoke overrides.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.console import ENGINE_LINE  # tests/ is on sys.path
from support.ray_cluster import cluster_processes, stop_cluster

from oat_cpgd.data import render_template
from oat_cpgd.oracles import get_oracle

REPO = Path(__file__).resolve().parents[1]


def test_r1_zero_math_registers_its_template_and_oracle():
    import examples.r1_zero_math  # noqa: F401  (registers qwen_math and r1_zero_math)

    prompt = render_template("qwen_math", {"problem": "1+1?"}, "problem")
    assert prompt.endswith("<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n")
    assert "final answer within \\boxed{}." in prompt
    oracle = get_oracle("r1_zero_math", num_workers=0)
    scores = {
        "<think>half</think> <answer> \\frac12 </answer>": (1.0, "\\frac12"),  # r1_zero's tags
        "so \\boxed{0.5}": (1.0, "0.5"),  # qwen_math's box, no tags
        "<answer>\\boxed{1/2}</answer> then \\boxed{3}": (1.0, "1/2"),  # the tags win over a later box
        "<answer>3</answer>": (0.0, "3"),
        "<answer> </answer>": (0.0, None),
        "one half": (0.0, None),
    }
    for response, (reward, answer) in scores.items():
        got, info = oracle.check("", response, "0.5")
        assert (got, info["answer"], info["format_ok"]) == (reward, answer, answer is not None), response


@pytest.mark.slow
def test_r1_zero_math_defaults_resolve_to_an_importable_oracle():
    # Ray workers import the oracle by name: the script's class must resolve to its module path.
    done = subprocess.run(
        [sys.executable, "examples/r1_zero_math.py", "--dry_run"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads(done.stdout)
    assert config["oracle"] == "examples.r1_zero_math:R1ZeroMathOracle"
    assert config["prompt_template"] == "qwen_math" and config["critic_type"] == "cpgd"


# Per recipe: flags of the real recipe that must survive into the smoke run, and where its data comes from.
RECIPES = {
    "gsm8k_ppo": ({"critic_type": "ppo", "num_ppo_epochs": 2, "beta": 1e-4, "oracle": "gsm8k",
                   "input_key": "question", "output_key": "final_answer", "apply_chat_template": True}, "gsm8k"),
    "countdown_r1_zero_grpo": ({"critic_type": "grpo", "beta": 1e-3, "oracle": "countdown",
                                "prompt_template": "countdown", "output_key": "target,nums"}, "countdown"),
    "deepscaler_ppo": ({"critic_type": "ppo", "critic_learning_rate": 1e-5, "max_norm": 0.5, "beta": 0.01,
                        "oracle": "math", "is_correction": "none", "apply_chat_template": True}, "deepscaler"),
    "deepscaler_cpgd": ({"critic_type": "cpgd", "policy_drift_coeff": 0.001, "cpgd_weight": "std", "beta": 0.0,
                         "max_norm": 0.5, "loss_agg_mode": "token-mean", "lr_scheduler": "constant"}, "deepscaler"),
    "gsm8k_python_tool_grpo": ({"critic_type": "grpo", "env": "python", "max_turns": 5, "tool_timeout": 30.0,
                                "oracle": "gsm8k", "prompt_template": "python_tool", "apply_chat_template": True,
                                "beta": 1e-3, "dual_clip": 3.0, "loss_agg_mode": "token-mean"}, "gsm8k"),
}  # fmt: skip


VENV = REPO / ".venv"


def user_environment(shims: Path) -> dict:
    """os.environ as a user's shell has it after `make install`: no PYTHON, no activated venv (neither the
    repository's nor the one running the tests on PATH), and a `python` first on PATH that fails loudly and
    leaves a mark, so a script that fell back to it cannot pass."""
    shims.mkdir()
    shim = shims / "python"
    shim.write_text(f'#!/bin/sh\ntouch "{shims}/used"\necho "python from PATH, not .venv/bin/python" >&2\nexit 97\n')
    shim.chmod(0o755)
    venvs = {VENV.resolve(), Path(sys.prefix).resolve()}
    path = [str(shims)] + [
        entry for entry in os.environ["PATH"].split(os.pathsep)
        if entry and not any(Path(entry).resolve().is_relative_to(venv) for venv in venvs)
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHON", "VIRTUAL_ENV")}
    return {**env, "PATH": os.pathsep.join(path)}


EXTRA_FLAGS = {"gsm8k_ppo": ["--verbose"]}
"""Flags one recipe's smoke run gets on top: its console shows every library's lines."""


@pytest.mark.slow
@pytest.mark.skipif(not (VENV / "bin" / "python").exists(), reason="no .venv here: `make install` creates it")
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_in_smoke_mode(recipe, tmp_path):
    """Each recipe, and the private Ray cluster a run without --ray_address starts: nothing of it
    (processes, session folder, shared memory) outlives the run. Its engines' lines go to logs/
    (--verbose: to the console)."""
    kept, data = RECIPES[recipe]
    extra = EXTRA_FLAGS.get(recipe, [])
    shm_before = set(os.listdir("/dev/shm"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must stay short
    env = {**user_environment(tmp_path / "shims"), "SMOKE": "1", "DATA_ROOT": str(tmp_path / "data"),
           "RAY_TMPDIR": str(ray_tmp)}  # fmt: skip
    try:
        done = subprocess.run(
            ["bash", f"examples/{recipe}.sh", "--save_path", str(tmp_path / "runs"), "--wb-run-name", "smoke", *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=570,
        )  # fmt: skip
        assert not (tmp_path / "shims" / "used").exists(), "the script ran `python` from PATH"
        assert done.returncode == 0, done.stderr[-4000:]
        assert list(ray_tmp.iterdir()) == []  # the session folder is gone
        assert not cluster_processes(str(ray_tmp))
        assert not [name for name in set(os.listdir("/dev/shm")) - shm_before if "ray" in name or "plasma" in name]
    finally:
        stop_cluster(str(ray_tmp))  # only if the run left it behind
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "metrics in" in done.stdout
    run = tmp_path / "runs" / "smoke"  # the name passed through "$@" overrides the script's own
    if "--verbose" in extra:
        assert (
            ENGINE_LINE.search(done.stdout + done.stderr) and "logs: printed on the console (--verbose)" in done.stdout
        )
    else:  # (the console also has the recipe's own steps: its data and model made, as the user sees them)
        logs = run / "logs"
        assert f"logs (vLLM, Ray, DeepSpeed, torch): {logs}/ actor0.log driver.log learner0.log" in done.stdout
        assert ENGINE_LINE.search((logs / "actor0.log").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]  # the evaluation before training, then the one step
    assert "eval/test/accuracy" in rows[0] and "train/pg_loss" in rows[1]
    assert (run / "final_model" / "config.json").is_file()
    config = json.loads((run / "config.json").read_text())
    assert {key: config[key] for key in kept} == kept
    if kept.get("env") == "python":  # the episodes ran in the tool's environment: its counters are logged
        assert {"actor/turns", "actor/tool_calls", "actor/sandbox_time"} <= rows[1].keys()
    assert config["gpus"] == 1 and config["max_steps"] == 1 and not config["bf16"]  # the smoke overrides
    assert config["prompt_data"] == str(tmp_path / "data" / data)  # prepared from ../shared/data just now
    assert (tmp_path / "data" / data / "train.jsonl").is_file()
    if recipe.startswith("deepscaler"):  # verl's recipes log to TensorBoard: --use-tb
        assert list((run / "tb").glob("events.out.tfevents.*"))
