"""Shared test setup: offline, in-tree caches, a small vLLM footprint, and the tiny model."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"

# Set before anything imports transformers or vLLM (they read these at import time); the
# Makefile exports the same values, so `pytest` and `make test` behave alike.
for name, value in {
    "HF_HOME": CACHE / "huggingface",
    "VLLM_CACHE_ROOT": CACHE / "vllm",
    "XDG_CACHE_HOME": CACHE,
    "TORCH_EXTENSIONS_DIR": CACHE / "torch_extensions",
    "TRITON_CACHE_DIR": CACHE / "triton",
    "RAY_TMPDIR": CACHE / "ray",
    "WANDB_DIR": CACHE / "wandb",
    "HF_HUB_OFFLINE": 1,
    "TRANSFORMERS_OFFLINE": 1,
    "VLLM_CPU_KVCACHE_SPACE": 1,  # GiB; vLLM on CPU otherwise reserves 9-14 GiB
    "VLLM_ENABLE_V1_MULTIPROCESSING": 0,  # engine in-process: starts in seconds, not ~30 s
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(name, str(value))


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The default tiny model, built once and reused across sessions (see its marker file)."""
    from oat_cpgd.models.tiny import build_tiny_model

    return build_tiny_model(CACHE / "test_models" / "tiny")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """shared/data in the repository's parent folder: the real datasets (GSM8K, MATH-500, countdown, ...)."""
    path = REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(f"shared data folder {path} is missing: tests need the datasets there")
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster shared by the runs of a test module (run() reuses a live session)."""
    import shutil

    import ray

    from oat_cpgd.cluster import start_local_ray

    # Ray workers import the test classes (support.loop, support.faults) as the driver does.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    temp_dir = start_local_ray()
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
