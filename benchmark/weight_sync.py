"""Weight sync on CPU: oat_cpgd's gloo broadcast against Ray's object store, same model, same actor.

    python benchmark/weight_sync.py [--hidden-size 512] [--layers 8] [--repeats 5]

Both paths end in the same place: the new weights loaded in place into a real vLLM actor (a
Ray actor), from a sender Ray actor that holds the model.
- broadcast: what the learners do (oat_cpgd.weight_sync): vLLM's weight-transfer API with the
  gloo backend, one tensor at a time into vLLM's layerwise reload;
- object store: the peer: safetensors bytes of the whole model through `ray.put`, deserialised
  by the actor and loaded with vLLM's `reload_weights`.
Prints the median seconds per sync and the ratio object store / broadcast (above 1: broadcast
is faster); the ratio, not the seconds, is the figure to compare across machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from oat_cpgd.actors import Actor

REPO = Path(__file__).resolve().parents[1]


class Sender:
    """Holds the model, as learner rank 0 does."""

    def __init__(self, model_path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)

    def connect(self, client, num_workers: int) -> None:
        from oat_cpgd.learners.weights import ModelWeights
        from oat_cpgd.weight_sync import weight_sender

        self.engine = weight_sender("gloo", 0, num_workers, client, ModelWeights(self.model))

    def broadcast(self) -> None:
        self.engine.send_weights()

    def safetensors_bytes(self) -> bytes:
        import safetensors.torch

        from oat_cpgd.learners.weights import ModelWeights

        # Copies: the tied head shares the embedding's storage, which safetensors refuses.
        state = {name: tensor.clone() for name, tensor in ModelWeights(self.model)}
        return safetensors.torch.save(state)  # a large result: Ray keeps it in the object store


def reload_from_bytes(worker, data: bytes) -> None:
    """Runs in the vLLM worker."""
    import safetensors.torch

    state = safetensors.torch.load(data)
    worker.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)


class ObjectStoreActor(Actor):
    """The real actor, plus the peer's receiving end."""

    def load_safetensors_bytes(self, data: bytes) -> None:
        self.llm.collective_rpc(reload_from_bytes, args=(data,))
        self.llm.reset_prefix_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import ray

    from oat_cpgd.args import PPOArgs
    from oat_cpgd.cluster import start_local_ray
    from oat_cpgd.models import build_tiny_model
    from oat_cpgd.placement import local_nodes, plan_placement
    from oat_cpgd.roles import ActorGroup

    size = f"h{options.hidden_size}-l{options.layers}"
    model_path = build_tiny_model(
        REPO / ".cache" / "bench_models" / size,
        hidden_size=options.hidden_size,
        intermediate_size=3 * options.hidden_size,
        num_layers=options.layers,
        num_heads=8,
        num_kv_heads=4,
    )
    megabytes = (model_path / "model.safetensors").stat().st_size / 2**20
    args = PPOArgs(pretrain=str(model_path), oracle="gsm8k", generate_max_length=16, prompt_max_length=64)
    args.resolve()

    start_local_ray()
    try:
        actor = ray.remote(ObjectStoreActor).options(num_cpus=0).remote(args, plan_placement(local_nodes(), args))
        sender = ray.remote(Sender).options(num_cpus=0).remote(str(model_path))
        workers = ray.get(actor.weight_workers.remote())
        ray.get(sender.connect.remote(ActorGroup([actor], [workers]), workers))

        def object_store() -> None:
            ray.get(actor.load_safetensors_bytes.remote(sender.safetensors_bytes.remote()))

        def broadcast() -> None:
            ray.get(sender.broadcast.remote())

        timings: dict[str, list[float]] = {"broadcast": [], "object store": []}
        for _ in range(options.repeats + 1):  # the first round warms both paths up
            for name, sync in (("broadcast", broadcast), ("object store", object_store)):
                start = time.perf_counter()
                sync()
                timings[name].append(time.perf_counter() - start)
    finally:
        ray.shutdown()

    medians = {name: statistics.median(values[1:]) for name, values in timings.items()}
    print(f"model {size}: {megabytes:.0f} MiB of fp32 weights, 1 actor, {options.repeats} syncs each")
    print(f"{'path':<14}{'median s':>10}{'MiB/s':>10}")
    for name, seconds in medians.items():
        print(f"{name:<14}{seconds:>10.3f}{megabytes / seconds:>10.0f}")
    print(f"ratio object store / broadcast: {medians['object store'] / medians['broadcast']:.2f}")


if __name__ == "__main__":
    main()
