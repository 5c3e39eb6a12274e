"""The Ray cluster a run uses: a private one on this machine, or one it attaches to (--ray_address);
the environment its workers get."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import ray

logger = logging.getLogger(__name__)

# Environment the Ray workers need: caches inside the work tree, offline mode, allocator tuning.
FORWARDED_ENV_PREFIXES = (
    "HF_",
    "TRANSFORMERS_",
    "VLLM_",
    "TORCH_",
    "XDG_CACHE_HOME",
    "WANDB_",
    "MALLOC_",
    "TOKENIZERS_",
)


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    # User oracles (`--oracle my_module:MyOracle`) import from the launch directory, as in the driver.
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    return env


def ray_temp_dir() -> str:
    """A fresh folder for Ray's session files, in RAY_TMPDIR (the work tree) when short enough.

    Ray puts unix sockets below it, and socket paths must stay under ~107 characters.
    """
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    if len(base) > 32:
        logger.warning("RAY_TMPDIR %s is too long for Ray's socket paths; using %s", base, tempfile.gettempdir())
        base = tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="ray-", dir=base)


def start_local_ray(**resources) -> str:
    """Start a private single-machine cluster, all its traffic on loopback; returns its temp dir.

    `resources`: what ray.init takes to override the machine's (tests give a CPU machine `num_gpus=8`).
    """
    temp_dir = ray_temp_dir()
    ray.init(
        include_dashboard=False,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": worker_env()},
        **resources,
    )
    return temp_dir


@contextlib.contextmanager
def ray_session(ray_address: str | None) -> Iterator[None]:
    """Attach to `ray_address`, reuse a running session, or start a local cluster and tear it down."""
    if ray.is_initialized():
        yield
        return
    temp_dir = None
    if ray_address:
        ray.init(address=ray_address, runtime_env={"env_vars": worker_env()})
    else:
        temp_dir = start_local_ray()
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
