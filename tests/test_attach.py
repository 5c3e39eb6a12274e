"""Attach mode: a Ray head started with `ray start --head` on loopback, then the CLI with --ray_address."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from oat_cpgd.interface import ray_temp_dir, worker_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--temp-dir",
            temp_dir,
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "oat_cpgd.experiment.run_cpgd",
                "--ray_address",
                f"127.0.0.1:{port}",
                "--pretrain",
                str(tiny_model_path),
                "--gpus",
                "2",
                "--prompt_data",
                str(shared_data / "gsm8k"),
                "--train_split",
                "train[:32]",
                "--input_key",
                "question",
                "--output_key",
                "final_answer",
                "--oracle",
                "gsm8k",
                "--num_samples",
                "2",
                "--rollout_batch_size",
                "4",
                "--train_batch_size",
                "8",
                "--train_batch_size_per_device",
                "2",
                "--generate_max_length",
                "8",
                "--max_steps",
                "1",
                "--save_path",
                str(tmp_path / "runs"),
                "--wb-run-name",
                "attached",
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=400,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        assert (tmp_path / "runs" / "attached" / "metrics.jsonl").read_text().count("\n") == 1
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
