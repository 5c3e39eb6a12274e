"""Checkpoints and resume: a crash loses nothing, and a resumed run continues exactly where it stopped."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from ray_support import kill_cluster  # tests/ is on sys.path
from transformers import AutoModelForCausalLM

from oat_cpgd.checkpoint import complete_checkpoints, latest_checkpoint, load_state, save_checkpoint
from oat_cpgd.run_log import keep_steps_up_to

REPO = Path(__file__).resolve().parents[1]


def write_file(name: str):
    return lambda folder: (folder / name).write_text("weights")


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 2, {"step": 2}, write_file("model"), max_keep=3)

    def crash(folder):
        (folder / "model").write_text("half")
        raise KeyboardInterrupt  # the process dies mid-write

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, {"step": 4}, crash, max_keep=3)
    assert latest_checkpoint(tmp_path).name == "step_2" and load_state(latest_checkpoint(tmp_path)) == {"step": 2}
    assert (latest_checkpoint(tmp_path) / "model").read_text() == "weights"
    # The next save clears the debris and succeeds.
    save_checkpoint(tmp_path, 4, {"step": 4}, write_file("model"), max_keep=3)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_2", "step_4"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_4"]


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (2, 4, 6, 8, 10):
        save_checkpoint(tmp_path, step, {"step": step}, write_file("model"), max_keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_8", "step_10"]  # numeric order, not text


def test_resume_drops_log_rows_after_the_checkpoint(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(5)) + '{"step": 5, "x"')
    keep_steps_up_to(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2]


FLAGS = """--gpus 2 --train_split train[:64] --input_key nums --output_key target,nums --prompt_template countdown
    --oracle loop_support:LengthOracle --oracle_workers 1 --num_samples 4 --rollout_batch_size 4 --rollout_batch_size_per_device 4
    --train_batch_size 8 --train_batch_size_per_device 2 --generate_max_length 16 --prompt_max_length 256
    --learning_rate 1e-3 --max_steps 4 --save_steps 2 --max_save_num 3 --eval_steps -1""".split()


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped(tiny_model_path, shared_data, tmp_path):
    """A 4-step run, and a run SIGKILLed after its step-2 checkpoint then resumed, draw the same prompts."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short, and ours: what the crash leaves is found
    # LengthOracle (tests/loop_support.py): rewards that differ within every group, so every step trains.
    python_path = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": python_path}
    data = str(shared_data / "countdown" / "train_head.jsonl")

    def command(name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "oat_cpgd.experiment.run_cpgd", "--pretrain", str(tiny_model_path),
                "--prompt_data", data, "--save_path", str(tmp_path), "--wb-run-name", name, *FLAGS, *extra]  # fmt: skip

    try:
        whole = subprocess.run(command("whole"), env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
        assert whole.returncode == 0, whole.stderr[-4000:]

        crashed = tmp_path / "crashed"
        process = subprocess.Popen(command("crashed"), env=env, cwd=REPO, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 300
        while not (crashed / "checkpoints" / "step_2" / "state.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no step-2 checkpoint"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kill_cluster(str(ray_tmp))  # the killed run's Ray processes, its workers included
        assert max(r["step"] for r in rows(crashed / "metrics.jsonl")) < 4

        resumed = subprocess.run(command("crashed", "--resume_dir", str(crashed)), env=env, cwd=REPO,
                                 capture_output=True, text=True, timeout=400)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-4000:]
    finally:
        kill_cluster(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)

    for name in ("metrics.jsonl", "samples.jsonl"):
        assert [r["step"] for r in rows(tmp_path / "whole" / name)] == [1, 2, 3, 4]
        assert [r["step"] for r in rows(crashed / name)] == [1, 2, 3, 4]
    whole_prompts = [r["prompt_indices"] for r in rows(tmp_path / "whole" / "samples.jsonl")]
    assert whole_prompts == [r["prompt_indices"] for r in rows(crashed / "samples.jsonl")]
    assert [set(r) for r in rows(tmp_path / "whole" / "metrics.jsonl")] == [
        set(r) for r in rows(crashed / "metrics.jsonl")
    ]
    for run in (tmp_path / "whole", crashed):
        assert [p.name for p in complete_checkpoints(run)] == ["step_2", "step_4"]
        assert load_state(latest_checkpoint(run))["step"] == 4
    # The newest checkpoint's policy loads, and holds the weights the run ended with: those of
    # final_model (saved after the same last step), trained away from the initial model.
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    for run in (tmp_path / "whole", crashed):
        checkpointed = AutoModelForCausalLM.from_pretrained(latest_checkpoint(run) / "policy").state_dict()
        final = AutoModelForCausalLM.from_pretrained(run / "final_model").state_dict()
        assert checkpointed.keys() == final.keys() == initial.keys()
        assert all(torch.equal(checkpointed[name], final[name]) for name in final), run.name
        assert not all(torch.equal(checkpointed[name], initial[name]) for name in initial), run.name
