"""The collocated (CUDA-IPC) weight sync's payload through vLLM's channel into the engine-core process.

On CUDA the engine core runs in its own process (VLLM_ENABLE_V1_MULTIPROCESSING=1, the default), and
every `collective_rpc` reaches it msgpack-encoded by the client's MsgpackEncoder
(vllm/v1/serial_utils.py). The CUDA-IPC handles are torch's `reduce_tensor` arguments, which hold
classes and a torch.dtype: the encoder refuses them unless VLLM_ALLOW_INSECURE_SERIALIZATION=1.

Real here: the learner's sender as the learner builds it (`weight_sender("ipc", ...)`: our
`trainer_init_info`, vLLM's IPCTrainerWeightTransferEngine with its packed producer) over our
ModelWeights of the tiny model; our Actor's weight-transfer methods; vLLM's LLM, LLMEngine and
multiprocess engine-core client (SyncMPClient: collective_rpc, call_utility, _send_input) and its
MsgpackEncoder; on the far side vLLM's MsgpackDecoder as the engine core's input thread uses it, the
update info's dataclass and vLLM's packed IPC consumer.

Stand-ins, as there is no CUDA here: `reduce_tensor` returns what torch's returns for a CUDA tensor
(torch/multiprocessing/reductions.py: `rebuild_cuda_tensor` and its 15 arguments: the tensor's own
class, size, stride, offset, storage class and dtype, and for the values `storage._share_cuda_()`
gives, values of the same types); the buffer vLLM allocates on "cuda" is CPU memory; the device index,
its UUID, the stream sync and `ipc_collect` are constants and no-ops; `rebuild_cuda_tensor` on the far
side maps the handle back to that buffer. The engine-core client's socket is replaced by the
engine-core side's decoding, and the engine is not started: the LLM objects are built without it.
"""

import os
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing.reductions as reductions
import vllm
from torch.overrides import TorchFunctionMode
from transformers import AutoModelForCausalLM
from vllm.distributed.weight_transfer import ipc_engine, packed_tensor
from vllm.distributed.weight_transfer.base import ParamMeta
from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferUpdateInfo
from vllm.distributed.weight_transfer.packed_tensor import DEFAULT_PACKED_BUFFER_SIZE_BYTES, packed_ipc_consumer
from vllm.v1.engine import EngineCoreRequestType
from vllm.v1.engine.core_client import SyncMPClient
from vllm.v1.engine.llm_engine import LLMEngine
from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

from oat_cpgd.actors import Actor
from oat_cpgd.learners.weights import ModelWeights
from oat_cpgd.weight_sync import trainer_init_info, weight_sender

GPU_UUID = "GPU-0a1b2c3d-0000-1111-2222-333344445555"
HANDLE = bytes(range(64))  # a cudaIpcMemHandle_t is 64 bytes


class CudaOnCpu(TorchFunctionMode):
    """Tensors asked for on device "cuda" (vLLM's packed IPC buffer) are made in CPU memory."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("device") == "cuda":
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


@pytest.fixture
def cuda_standins(monkeypatch) -> dict[bytes, torch.Tensor]:
    """The CUDA stand-ins (see the module docstring); returns the buffers shared, by IPC handle."""
    shared = {}

    def reduce_tensor(tensor):
        storage = tensor._typed_storage()
        shared[HANDLE] = tensor
        return reductions.rebuild_cuda_tensor, (
            type(tensor),
            tensor.size(),
            tensor.stride(),
            tensor.storage_offset(),
            type(storage),
            tensor.dtype,
            0,  # device index
            HANDLE,
            tensor.untyped_storage().nbytes(),
            0,  # the storage's offset in its CUDA allocation
            tensor.requires_grad,
            b"/torch_4242_1234567890_0",  # the ref counter's shared-memory file
            0,  # the ref counter's offset
            bytes(64),  # a cudaIpcEventHandle_t
            True,  # event_sync_required
        )

    def rebuild_cuda_tensor(tensor_cls, size, stride, offset, storage_cls, dtype, device, handle, *_):
        assert (tensor_cls, storage_cls, dtype) == (torch.Tensor, torch.TypedStorage, torch.uint8)
        return shared[handle].as_strided(size, stride, offset)

    monkeypatch.setattr(packed_tensor, "reduce_tensor", reduce_tensor)
    monkeypatch.setattr(ipc_engine, "reduce_tensor", reduce_tensor)  # the unpacked sender's
    monkeypatch.setattr(reductions, "rebuild_cuda_tensor", rebuild_cuda_tensor)
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(uuid=GPU_UUID))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: SimpleNamespace(synchronize=lambda: None))
    monkeypatch.setattr(torch.cuda, "ipc_collect", lambda: None)
    return shared


@pytest.fixture
def vllm_env(monkeypatch):
    """monkeypatch, for variables as vllm.envs reads them: an in-process engine built earlier in this
    process (test_actor's) froze vllm.envs (`enable_envs_cache`); thawed here, frozen again after."""
    from vllm import envs

    was_frozen = envs._is_envs_cache_enabled()
    envs.disable_envs_cache()
    yield monkeypatch
    monkeypatch.undo()
    if was_frozen:
        envs.enable_envs_cache()


class EngineCoreSide:
    """The engine-core process's end of the client's input socket: decodes each request as its input
    thread does (EngineCoreProc.process_input_sockets) and answers it."""

    def __init__(self, client: SyncMPClient) -> None:
        self.client = client
        self.calls: list[tuple[str, list]] = []

    def send_multipart(self, msg, copy=True) -> None:
        _engine, request_type, *frames = msg
        assert request_type == EngineCoreRequestType.UTILITY.value
        _client_index, call_id, method, args = MsgpackDecoder().decode(frames)
        self.calls.append((method, args))
        self.client.utility_results.pop(call_id).set_result(None)


def actor_over_engine_core_channel() -> tuple[Actor, EngineCoreSide]:
    """Our Actor over vLLM's LLM, LLMEngine and multiprocess engine-core client, with no engine."""
    client = object.__new__(SyncMPClient)
    client.encoder = MsgpackEncoder()  # as MPClient.__init__ makes it for a text-only model
    client.resources = SimpleNamespace(engine_dead=False)
    client.utility_results = {}
    client.core_engine = (0).to_bytes(2, "little")
    client.input_socket = engine_core = EngineCoreSide(client)
    engine = object.__new__(LLMEngine)
    engine.engine_core = client
    llm = object.__new__(vllm.LLM)
    llm.llm_engine = engine
    actor = object.__new__(Actor)
    actor.llm = llm
    return actor, engine_core


def sync_once(model) -> list[tuple[str, list]]:
    """One collocated sync of `model`'s weights to an actor; the calls as the engine core decodes them."""
    actor, engine_core = actor_over_engine_core_channel()
    sender = weight_sender("ipc", rank=0, num_workers=1, client=actor, source=ModelWeights(model))
    with CudaOnCpu():
        sender.send_weights()
    return engine_core.calls


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)


@pytest.mark.parametrize("setting", [None, "0"])
def test_without_insecure_serialization_the_ipc_handles_cannot_reach_the_engine_core(
    setting, model, cuda_standins, vllm_env
):
    if setting is None:
        vllm_env.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    else:
        vllm_env.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", setting)
    with pytest.raises(TypeError, match="torch._C._TensorMeta'> is not serializable"):
        sync_once(model)


def test_with_insecure_serialization_the_engine_core_gets_the_weights_through_one_packed_buffer(
    model, cuda_standins, vllm_env
):
    vllm_env.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    calls = sync_once(model)
    # Each Actor call is one collective_rpc: (method, timeout, args, kwargs) as the workers get them.
    assert [(method, args[0]) for method, args in calls] == [
        ("collective_rpc", "init_weight_transfer_engine"),
        ("collective_rpc", "start_weight_update"),
        ("collective_rpc", "update_weights"),  # the tiny model fits one buffer
        ("collective_rpc", "finish_weight_update"),
        ("reset_prefix_cache", False),
    ]
    assert calls[0][1][3] == {"init_info": {"packed": True}}  # the workers unpack what the sender packs
    _, timeout, positional, kwargs = calls[2][1]
    # The Actor's {"update_info": ...} became the workers' update_weights(update_info=...).
    assert (timeout, positional, list(kwargs)) == (None, [], ["update_info"])
    info = IPCWeightTransferUpdateInfo(**kwargs["update_info"])  # as the worker's engine parses it
    assert isinstance(info.ipc_handles, dict) and info.tensor_sizes  # one packed buffer, not a handle a weight
    (args,) = info.ipc_handles.values()
    # What torch's rebuild_cuda_tensor gets: the classes and the dtype survived (msgpack makes tuples lists).
    assert args[:7] == [torch.Tensor, [DEFAULT_PACKED_BUFFER_SIZE_BYTES], [1], 0, torch.TypedStorage, torch.uint8, 0]
    received = packed_ipc_consumer(
        info.ipc_handles, info.names, info.shapes, info.dtype_names, info.tensor_sizes, device_index=0
    )
    sent = dict(ModelWeights(model))
    assert [name for name, _ in received] == list(sent)
    for name, tensor in received:
        assert torch.equal(tensor, sent[name]), name


def test_the_ipc_sender_packs_into_one_buffer_that_holds_the_largest_weight(model):
    tiny = trainer_init_info("ipc", rank=0, world_size=2, source=ModelWeights(model))
    assert tiny.packed and tiny.packed_buffer_size_bytes == DEFAULT_PACKED_BUFFER_SIZE_BYTES
    # Qwen2.5-7B's embedding in bf16, 1.015 GiB, does not fit vLLM's default buffer.
    qwen_7b = [ParamMeta("model.embed_tokens.weight", torch.bfloat16, (152064, 3584))]
    info = trainer_init_info("ipc", rank=0, world_size=2, source=SimpleNamespace(metadata=lambda: qwen_7b))
    assert info.packed and info.packed_buffer_size_bytes == 152064 * 3584 * 2 > DEFAULT_PACKED_BUFFER_SIZE_BYTES


@pytest.mark.parametrize(
    ("on_cuda", "collocate", "before", "after"),
    [
        (False, False, None, "1"),  # on every device, so that CPU runs encode as CUDA ones do
        (True, False, None, "1"),
        (True, False, "0", "0"),  # a user's choice, where nothing the run sends needs pickle
        (True, True, "0", "1"),  # but the CUDA-IPC sync cannot work without it
    ],
)
def test_actors_allow_insecure_serialization_where_the_ipc_sync_needs_it(
    on_cuda, collocate, before, after, monkeypatch, caplog
):
    from oat_cpgd.actors.actor import configure_vllm_env

    environ = {k: v for k, v in os.environ.items() if k != "VLLM_ALLOW_INSECURE_SERIALIZATION"}
    monkeypatch.setattr(
        os, "environ", environ | ({} if before is None else {"VLLM_ALLOW_INSECURE_SERIALIZATION": before})
    )
    configure_vllm_env(SimpleNamespace(vllm_cpu_kvcache_gb=1), SimpleNamespace(on_cuda=on_cuda, collocate=collocate))
    assert os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] == after
    assert ("overridden with 1" in caplog.text) == (before not in (None, after))
