"""Weight sync: learner rank 0 sends the policy's weights to every actor's vLLM workers.

Built on vLLM's weight-transfer API. Each actor's engine holds a worker-side transfer engine
(`WeightTransferConfig(backend=...)`); the learners hold a trainer-side one that drives a round:
start, send + receive, finish. The backend follows the devices:
- "nccl" (CUDA, actors on their own GPUs): vLLM's NCCL broadcast from learner rank 0;
- "ipc" (CUDA, collocated): vLLM's CUDA IPC, since NCCL cannot join two processes on one GPU;
- "gloo" (CPU, where NCCL does not exist): the same broadcast over torch.distributed's gloo,
  defined below and registered with vLLM (also in vLLM's own processes, via the
  `vllm.general_plugins` entry point in setup.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, ClassVar

import torch
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

# vLLM's layerwise reload warns at every sync that the rotary embedding (which has no weights)
# got none. A filter, unlike a level, survives vLLM re-applying its logging config.
logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
    lambda record: record.getMessage() != "RotaryEmbedding: Failed to load weights"
)


def transfer_backend(on_cuda: bool, collocate: bool) -> str:
    if not on_cuda:
        return "gloo"
    return "ipc" if collocate else "nccl"


def weight_sender(
    backend: str, rank: int, num_workers: int, client: VLLMWeightSyncClient, source: WeightSource
) -> TrainerWeightTransferEngine:
    """Learner `rank`'s end of the transfer to the `num_workers` vLLM workers behind `client`.

    Every learner rank calls it, and then `send_weights()`, together; rank 0 is the sender.
    """
    register_gloo_backend()
    info = trainer_init_info(backend, rank, world_size=1 + num_workers, source=source)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)


def trainer_init_info(backend: str, rank: int, world_size: int, source: WeightSource) -> TrainerInitInfo:
    """What learner `rank` passes to vLLM's trainer engine to send `source`; `world_size` counts the
    sender and every vLLM worker.

    The broadcast backends rendezvous at a free port on learner rank 0's host. CUDA IPC goes through
    one reused buffer (packed): unpacked, vLLM keeps an IPC-shared copy of every weight until the
    update ends, a whole model more per GPU under ZeRO-3. Peers bound it too: verl sends buckets of
    `update_weights_bucket_megabytes`, OpenRLHF one parameter at a time. The buffer is vLLM's default
    size (1 GiB), or the largest weight where that is larger: a weight must fit whole (vLLM's
    `packed_ipc_producer` raises otherwise), and Qwen2.5-7B's embedding and head (152064 x 3584 in
    bf16) take 1.015 GiB each.
    """
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
        from vllm.distributed.weight_transfer.packed_tensor import DEFAULT_PACKED_BUFFER_SIZE_BYTES

        largest = max(m.dtype.itemsize * math.prod(m.shape) for m in source.metadata())
        return IPCTrainerInitInfo(
            rank=rank, packed=True, packed_buffer_size_bytes=max(DEFAULT_PACKED_BUFFER_SIZE_BYTES, largest)
        )
    address, port = broadcast_endpoint() if rank == 0 else ("", 0)
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(master_address=address, master_port=port, world_size=world_size, rank=rank)
    return GlooTrainerInitInfo(master_address=address, master_port=port, world_size=world_size, rank=rank)


def broadcast_endpoint() -> tuple[str, int]:
    """Where the weight broadcast group meets: this host's address as other hosts reach it, and a free port."""
    import ray

    from oat_cpgd.cluster import free_port

    return (ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"), free_port()


# ---------------------------------------------------------------------------- gloo backend (CPU)
@dataclass(kw_only=True)
class GlooInitInfo(WeightTransferInitInfo):
    """Worker side: where the sender listens, and this engine's first rank in the group."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = "gloo"

    master_address: str
    master_port: int
    world_size: int


GLOO_TIMEOUT = timedelta(minutes=30)
"""How long either end waits for the other; with --asynchronous the sender waits out a rollout."""


def _gloo_group(address: str, port: int, rank: int, world_size: int):
    """A gloo group of its own, apart from vLLM's and DeepSpeed's default groups.

    Built here rather than with vLLM's stateless helper, which points fd 1 at /dev/null while it
    works: with both ends in one process (the tests) the two calls race and stdout stays lost.
    """
    from torch.distributed import PrefixStore, TCPStore
    from torch.distributed.distributed_c10d import ProcessGroupGloo

    store = TCPStore(address, port, world_size, is_master=rank == 0, timeout=GLOO_TIMEOUT)
    return ProcessGroupGloo(PrefixStore("oat_cpgd/weights", store), rank, world_size, timeout=GLOO_TIMEOUT)


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, NCCLWeightTransferUpdateInfo]):
    """Worker side: receives each tensor by broadcast and loads it with vLLM's layerwise reload,
    which (unlike a plain `load_weights`) also works after the CPU backend has re-packed the weights."""

    init_info_cls = GlooInitInfo
    update_info_cls = NCCLWeightTransferUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        config = self.parallel_config
        rank = config.data_parallel_index * config.world_size + config.rank + init_info.rank_offset
        self.group = _gloo_group(init_info.master_address, init_info.master_port, rank, init_info.world_size)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: NCCLWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialized: call init_weight_transfer_engine first")
        for name, dtype_name, shape in zip(update_info.names, update_info.dtype_names, update_info.shapes, strict=True):
            weight = torch.empty(shape, dtype=getattr(torch, dtype_name), device=self.device)
            self.group.broadcast(weight, 0).wait()
            self.model.load_weights([(name, weight)])

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        self.group = None


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side. Every learner rank iterates the source (a ZeRO-3 gather is a collective);
    rank 0 alone drives the actors and broadcasts."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client: VLLMWeightSyncClient, source: WeightSource, is_sender: bool) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.group = None

    @classmethod
    def trainer_init(
        cls, init_info: GlooTrainerInitInfo, *, client: VLLMWeightSyncClient, source: WeightSource | None = None
    ) -> GlooTrainerWeightTransferEngine:
        if source is None:
            raise ValueError("gloo weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        if engine.is_sender:
            worker_info = GlooInitInfo(
                master_address=init_info.master_address,
                master_port=init_info.master_port,
                rank_offset=1,
                world_size=init_info.world_size,
            )
            # Both sides block in the rendezvous: the workers join from a side thread.
            with _side_thread(client.init_weight_transfer_engine, asdict(worker_info)) as joined:
                engine.group = _gloo_group(init_info.master_address, init_info.master_port, 0, init_info.world_size)
                joined.result()
        return engine

    def send_weights(self) -> None:
        if not self.is_sender:
            for _ in self.source:
                pass
            return
        meta = self.source.metadata()
        update_info = NCCLWeightTransferUpdateInfo(
            names=[m.name for m in meta],
            dtype_names=[str(m.dtype).removeprefix("torch.") for m in meta],
            shapes=[list(m.shape) for m in meta],
        )
        self.client.start_weight_update()
        # The workers receive (in update_weights) while this rank sends.
        with _side_thread(self.client.update_weights, asdict(update_info)) as received:
            for expected, (name, tensor) in zip(meta, self.source, strict=True):
                if name != expected.name or tuple(tensor.shape) != expected.shape:
                    raise ValueError(f"weight source yielded {name} {tuple(tensor.shape)}, declared {expected}")
                self.group.broadcast(tensor.contiguous(), 0).wait()
            received.result()
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = None


@contextlib.contextmanager
def _side_thread(fn, *args: Any) -> Iterator[Future]:
    """Run `fn` beside the caller. On the way out it is not waited for: after a failed transfer
    the other side may never return (its group is unusable anyway and times out)."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        yield pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)


def register_gloo_backend() -> None:
    """Entry point of the `vllm.general_plugins` group; vLLM may call it more than once per process."""
    for factory, engine in (
        (WeightTransferEngineFactory, GlooWeightTransferEngine),
        (WeightTransferTrainerFactory, GlooTrainerWeightTransferEngine),
    ):
        with contextlib.suppress(ValueError):  # already registered
            factory.register_engine("gloo", engine)
