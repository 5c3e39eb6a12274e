"""The CLI attached to a running Ray cluster (a private local cluster's teardown is checked by tests/test_recipes.py)."""

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.console import check_quiet_console  # tests/ is on sys.path
from support.ray_cluster import cluster_processes, stop_cluster

from oat_cpgd.cluster import cpu_actor_env, free_port, ray_temp_dir, worker_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_a_cpu_actor_gets_a_small_kernel_cache_and_tcmalloc_where_the_system_has_it(monkeypatch, caplog):
    libraries = {"tcmalloc_minimal": "libtcmalloc_minimal.so.4"}
    monkeypatch.setattr("ctypes.util.find_library", libraries.get)
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LD_PRELOAD", "libmine.so")
    assert cpu_actor_env() == {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16",
        "LD_PRELOAD": "libtcmalloc_minimal.so.4:libmine.so",
    }
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")  # the user's values are kept
    monkeypatch.setenv("LD_PRELOAD", "/opt/libtcmalloc.so")
    assert cpu_actor_env() == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LD_PRELOAD": "/opt/libtcmalloc.so"}
    libraries.clear()  # not installed: said, with the package to install
    monkeypatch.delenv("LD_PRELOAD")
    assert cpu_actor_env() == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}
    assert "apt install libtcmalloc-minimal4" in caplog.text


def cli_run(model: Path, data: Path, save_path: Path, name: str, *extra: str, env: dict) -> None:
    """One learning step of run_cpgd on GSM8K rows, as a subprocess, exactly as a user types it; its
    console shows no library's lines (they are in the run's logs/)."""
    flags = f"""--pretrain {model} --gpus 2 --prompt_data {data / "gsm8k"} --train_split train[:32]
        --input_key question --output_key final_answer --oracle gsm8k --num_samples 2 --rollout_batch_size 4
        --train_batch_size 8 --train_batch_size_per_device 2 --generate_max_length 8 --max_steps 1
        --eval_split test[:4] --eval_generate_max_length 8 --save_path {save_path} --wb-run-name {name}""".split()
    done = subprocess.run(
        [sys.executable, "-m", "oat_cpgd.experiment.run_cpgd", *flags, *extra],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in (save_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]  # the evaluation before training, then the one step
    assert all("eval/test/accuracy" in row for row in rows)
    assert "metrics in" in done.stdout
    check_quiet_console(done.stdout + done.stderr, save_path / name)


def test_attach_to_a_running_cluster(tiny_model_path, shared_data, tmp_path):
    """`ray start --head` on loopback, then the CLI entry point with --ray_address."""
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        **worker_env(),
        # Ray otherwise swaps 127.0.0.1 for the machine's address; this keeps head and driver on loopback.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Token auth, as a shared cluster should have it: the head and the run read the same token.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    temp_dir = ray_temp_dir()
    head = f"start --head --node-ip-address 127.0.0.1 --port {port} --num-cpus 2 --include-dashboard false"
    try:
        subprocess.run([ray_bin, *head.split(), "--temp-dir", temp_dir], check=True, env=env, capture_output=True)
        assert cluster_processes(temp_dir), "ray start left no process naming its --temp-dir"
        cli_run(
            tiny_model_path, shared_data, tmp_path / "runs", "attached", "--ray_address", f"127.0.0.1:{port}", env=env
        )
    finally:
        stop_cluster(temp_dir)  # only the cluster started above
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not cluster_processes(temp_dir)
