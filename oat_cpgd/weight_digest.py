"""The engine-side weight digest: after a sync, what each vLLM worker computes with, tensor by tensor,
against what the learner sent.

The sync check's probe (oat_cpgd.roles.Roles.start_check) compares log-probs within a tolerance, so it misses a
change smaller than the tolerance: a stale tensor after a small learning step, a slightly mis-scaled
LoRA merge. The digest is exact: a checksum of the bits of every weight on both sides. (A digest of each
layer's output for a fixed random input, compared within a tolerance, would need one that covers bf16
rounding, ~4e-3 of the output, far above what a learning step changes: ~1e-4 of a weight at lr 1e-6.)

vLLM does not hold the learner's tensors as they are, so each worker first recovers, from its own
modules, the slices of the learner's (Hugging Face) tensors it holds, and says which they are (`Piece`):
- fused modules (the model's `packed_modules_mapping`: q/k/v in qkv_proj, gate/up in gate_up_proj) hold
  several tensors as row blocks;
- tensor parallelism gives each worker a block of rows (column-parallel layers, the vocabulary) or of
  columns (row-parallel layers) of each tensor;
- the CPU backend re-packs a linear layer's weight for its kernels after loading and empties
  `layer.weight` (vLLM's `dispatch_cpu_unquantized_gemm`), and keeps the output layer's own packed copy
  beside the embedding's. A linear layer's weight is therefore read through the layer's own kernel
  (`quant_method.apply`) applied to the identity matrix: row j of the output is column j of the weight,
  exact, as each output sums a single weight times 1 with zeros. This reads what the kernel computes with,
  whatever its layout, and costs one forward of `input size` tokens through the layer.
The learner then digests the same slices of the tensors it sends (`expected_digests`), cast to the
worker's dtype as vLLM's loaders cast them, and the two are compared (`compare`).

A digest is a checksum of the bits, exact (the bits as integers times random weights by position, so that
a moved block changes it too, summed exactly modulo a prime) and, to say how large a difference is, four
random-sign projections of the values, whose difference estimates the norm of the difference.

Cost per check: the read-back is a forward of `input size` tokens through every linear layer (on CPU the
larger part for a 135M model: ~200 GFLOP), and each side digests every weight once (a few passes over it).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import astuple, dataclass

import torch

from oat_cpgd.roles import WeightSyncError

PRIME = 2**31 - 1
"""The checksum's modulus."""
CHUNK = 256
"""Elements weighed by one table of distinct random integers below 2**14: a chunk's sum of products with
its bits as 32-bit (or 16-bit) integers stays below 2**53, so a float64 matrix product computes it exactly,
in any order of summation, on any device. The chunks are weighed by a hash of their index."""
BLOCK = 1 << 22
"""Elements digested at a time."""
PROJECTIONS = 4


class WeightDigestError(WeightSyncError):
    """A vLLM worker holds a weight that differs from the one the learner sent, or cannot be compared."""


@dataclass(frozen=True, order=True)
class Piece:
    """A slice of one of the learner's tensors, as one vLLM worker holds it."""

    name: str
    """The learner's (Hugging Face) name."""
    dim: int | None
    """The dimension tensor parallelism splits; None: the whole tensor."""
    start: int
    length: int
    dtype: str
    """The worker's dtype, which vLLM's loaders cast to."""

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        """This slice of the learner's `tensor`, in the worker's dtype."""
        part = tensor if self.dim is None else tensor.narrow(self.dim, self.start, self.length)
        return part.to(getattr(torch, self.dtype))

    def __str__(self) -> str:
        if self.dim is None:
            return self.name
        return f"{self.name} [{':, ' * self.dim}{self.start}:{self.start + self.length}]"


@dataclass(frozen=True)
class Digest:
    checksum: int
    projections: tuple[float, ...]

    def gap(self, other: Digest) -> float:
        """Estimated norm of the difference of the two tensors: E[(s·Δ)²] = ‖Δ‖² for random signs s."""
        return math.dist(self.projections, other.projections) / math.sqrt(PROJECTIONS)

    def norm(self) -> float:
        return math.hypot(*self.projections) / math.sqrt(PROJECTIONS)


@functools.cache
def _tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The CHUNK position weights and PROJECTIONS rows of CHUNK random signs, seeded: the learner and every
    worker draw the same."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.randperm((1 << 14) - 1, generator=generator)[:CHUNK].double() + 1
    signs = torch.randint(0, 2, (PROJECTIONS, CHUNK), generator=generator).float() * 2 - 1
    return weights.to(device), signs.to(device)


def _blocks(flat: torch.Tensor, dtype: torch.dtype) -> Iterator[tuple[int, torch.Tensor]]:
    """`flat` BLOCK elements at a time, each with where it starts, converted to `dtype` (in one buffer)."""
    buffer = torch.empty(min(BLOCK, flat.numel()), dtype=dtype, device=flat.device)
    for start in range(0, flat.numel(), BLOCK):
        block = flat[start : start + BLOCK]
        yield start, block if block.dtype == dtype else buffer[: block.numel()].copy_(block)


def _by_chunk(flat: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each CHUNK of `flat` times the `table` vector; the last, shorter chunk (empty, so zero, when `flat`
    is whole chunks) times as much of it."""
    whole = flat.numel() - flat.numel() % CHUNK
    return torch.cat([flat[:whole].view(-1, CHUNK) @ table, (flat[whole:] @ table[: flat.numel() - whole])[None]])


def _chunk_hash(first: int, count: int, device: torch.device) -> torch.Tensor:
    """A hash in [0, PRIME) of chunks first.. first + count - 1, distinct for fewer than PRIME / 2 chunks."""
    index = torch.arange(first + 1, first + count + 1, device=device)
    return (index * 0x5BD1E995 % PRIME) ** 2 % PRIME


@torch.no_grad()
def digest(tensor: torch.Tensor) -> Digest:
    """The tensor's checksum (of its bits) and projections (of its values)."""
    # + 0.0 makes -0.0 into 0.0: a kernel that reads a weight back (see `held_weights`) may return
    # either for a zero weight.
    values = (tensor.detach() + 0.0).contiguous().reshape(-1)
    bits = values.view(torch.int32 if values.element_size() % 4 == 0 else torch.int16)
    weights, signs = _tables(values.device)
    checksum = 0
    for start, block in _blocks(bits, torch.float64):  # the bits as integers, exact in float64
        sums = _by_chunk(block, weights).long() % PRIME
        checksum += int((sums * _chunk_hash(start // CHUNK, len(sums), block.device) % PRIME).sum())
    projections = [0.0] * PROJECTIONS
    for start, block in _blocks(values, torch.float32):
        hashes = _chunk_hash(start // CHUNK, block.numel() // CHUNK + 1, block.device)
        for k in range(PROJECTIONS):  # (one at a time: on CPU faster than a [chunks, PROJECTIONS] product)
            # Each chunk's signs flipped by a bit of its hash: no two positions' signs repeat together.
            flips = (1 - 2 * (hashes >> k & 1)).double()
            projections[k] += float(_by_chunk(block, signs[k]).double() @ flips)
    return Digest(checksum % PRIME, tuple(projections))


# ---------------------------------------------------------------------------- the vLLM worker's side
def worker_digests(worker) -> list[tuple[tuple, tuple]]:
    """Run by each vLLM worker (through `collective_rpc`): the digest of every piece it holds, as plain
    tuples. With the engine core in its own process (CUDA's default) the results cross msgpack, which
    turns a dataclass into a dict; `from_worker` makes them Pieces and Digests again."""
    return [
        (astuple(piece), (held.checksum, held.projections))
        for piece, held in ((piece, digest(tensor)) for piece, tensor in held_weights(worker.model_runner.get_model()))
    ]


def from_worker(rows: list) -> list[tuple[Piece, Digest]]:
    """`worker_digests`' rows (tuples or, through msgpack, lists) as Pieces and Digests."""
    return [(Piece(*piece), Digest(checksum, tuple(projections))) for piece, (checksum, projections) in rows]


def held_weights(model: torch.nn.Module) -> Iterator[tuple[Piece, torch.Tensor]]:
    """Every slice of the learner's tensors that this worker's `model` holds, with its values as the
    worker computes with them."""
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    packed = getattr(model, "packed_modules_mapping", {})
    for module_name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        prefix = module_name.rpartition(".")[0] + "." if "." in module_name else ""
        leaf = module_name.rpartition(".")[2]
        if isinstance(module, LinearBase):
            input_size = getattr(module, "input_size_per_partition", module.input_size)  # (ReplicatedLinear: whole)
            weight, bias = kernel_weight(module, input_size), params.get("bias")
            dtype = _dtype(weight)
            for name, dim, local, start, length in linear_layout(module, packed.get(leaf, [leaf])):
                if dim is None:
                    yield Piece(f"{prefix}{name}.weight", None, 0, 0, dtype), weight
                else:
                    yield Piece(f"{prefix}{name}.weight", dim, start, length, dtype), weight.narrow(dim, local, length)
                if bias is None:
                    continue
                if dim == 0:  # split as the weight's rows
                    yield Piece(f"{prefix}{name}.bias", 0, start, length, dtype), bias.narrow(0, local, length)
                else:  # a row-parallel (or replicated) layer's bias is whole on every worker
                    yield Piece(f"{prefix}{name}.bias", None, 0, 0, dtype), bias
        elif isinstance(module, VocabParallelEmbedding):
            # The output layer computes with its kernel's copy; the embedding looks its rows up in `weight`.
            weight = (
                kernel_weight(module, module.embedding_dim) if isinstance(module, ParallelLMHead) else module.weight
            )
            shard = module.shard_indices
            rows = shard.org_vocab_end_index - shard.org_vocab_start_index  # after them: padding
            piece = Piece(f"{module_name}.weight", 0, shard.org_vocab_start_index, rows, _dtype(module.weight))
            yield piece, weight[:rows]
        else:  # norms and the like: replicated, as the learner has them
            for name, param in params.items():
                yield Piece(f"{module_name}.{name}", None, 0, 0, _dtype(param)), param


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


@torch.no_grad()
def kernel_weight(layer: torch.nn.Module, input_size: int) -> torch.Tensor:
    """The weight `layer`'s kernel multiplies by, [output size, `input_size`]: its output for the identity,
    transposed (exact, see the module's docstring), a block of identity rows at a time."""
    dtype, device = layer.weight.dtype, layer.weight.device
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # TF32 would round float32 weights on CUDA
    try:
        columns = []
        for start in range(0, input_size, 1024):
            rows = min(1024, input_size - start)
            identity = torch.zeros(rows, input_size, dtype=dtype, device=device)
            identity[:, start : start + rows].fill_diagonal_(1)
            columns.append(layer.quant_method.apply(layer, identity, None).t())
        return torch.cat(columns, dim=1)
    finally:
        torch.set_float32_matmul_precision(precision)


def linear_layout(layer, names: list[str]) -> list[tuple[str, int | None, int, int, int]]:
    """Where `layer` (a vLLM linear layer on one tensor-parallel rank) holds the tensors `names` it fuses:
    (name, dimension split, offset in the layer, offset in the learner's tensor, length), as vLLM's
    weight loaders put them (vllm/model_executor/layers/linear.py)."""
    from vllm.model_executor.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        ReplicatedLinear,
        RowParallelLinear,
    )

    if isinstance(layer, QKVParallelLinear):
        # Each rank holds its q heads, and its k and v heads; fewer kv heads than ranks are replicated.
        kv_rank = layer.tp_rank // layer.num_kv_head_replicas
        sizes = [layer.num_heads * layer.head_size, layer.num_kv_heads * layer.head_size,
                 layer.num_kv_heads * layer.v_head_size]  # fmt: skip
        ranks = [layer.tp_rank, kv_rank, kv_rank]
    elif isinstance(layer, MergedColumnParallelLinear):
        sizes = [size // layer.tp_size for size in layer.output_sizes]
        ranks = [layer.tp_rank] * len(sizes)
    elif isinstance(layer, ColumnParallelLinear):
        sizes, ranks = [layer.output_size_per_partition], [layer.tp_rank]
    elif isinstance(layer, RowParallelLinear):
        size = layer.input_size_per_partition
        return [(names[0], 1, 0, layer.tp_rank * size, size)]
    elif isinstance(layer, ReplicatedLinear):
        return [(names[0], None, 0, 0, 0)]
    else:
        raise WeightDigestError(f"the weight digest does not know how {type(layer).__name__} lays out its weights")
    if len(names) != len(sizes):
        raise WeightDigestError(f"{type(layer).__name__} fuses {len(sizes)} tensors, the model names {names}")
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    return [
        (name, 0, offset, rank * size, size)
        for name, offset, rank, size in zip(names, offsets, ranks, sizes, strict=True)
    ]


# ---------------------------------------------------------------------------- the learner's side
def expected_digests(
    weights: Iterable[tuple[str, torch.Tensor]], pieces: Collection[Piece], compute: bool = True
) -> tuple[dict[Piece, Digest], list[str]]:
    """The digests of `pieces` of the `weights` the learner sends, and the names it sends.

    Every learner rank iterates `weights` (under ZeRO-3 each tensor is a gather, a collective); only one
    needs to `compute`."""
    wanted = defaultdict(list)
    for piece in pieces:
        wanted[piece.name].append(piece)
    digests, names = {}, []
    for name, tensor in weights:
        names.append(name)
        if compute:
            digests.update((piece, digest(piece.of(tensor))) for piece in wanted[name])
    return digests, names


# ---------------------------------------------------------------------------- the comparison
def compare(held: list[list[list[tuple[Piece, Digest]]]], expected: dict[Piece, Digest], sent: list[str]) -> None:
    """Raise WeightDigestError unless every actor's workers (`held[actor][worker]`) hold, between them,
    each tensor the learner `sent`, and each piece exactly as `expected`."""
    for actor, workers in enumerate(held):
        names = {piece.name for pieces in workers for piece, _ in pieces}
        if names != set(sent):
            unheld, unknown = sorted(set(sent) - names), sorted(names - set(sent))
            raise WeightDigestError(
                f"actor {actor}'s engine holds no weight for {unheld} that the learner sends, and holds {unknown} "
                "that it does not: the weight digest cannot map this model's weights (--sync_check_every 0 turns "
                "the sync check off)."
            )
        wrong = [
            (worker, piece, seen)
            for worker, pieces in enumerate(workers)
            for piece, seen in pieces
            if seen.checksum != expected[piece].checksum
        ]
        if wrong:
            worker, piece, seen = wrong[0]
            want = expected[piece]
            others = ", ".join(str(p) for _, p, _ in wrong[1:6]) + (", ..." if len(wrong) > 6 else "")
            raise WeightDigestError(
                f"after the weight sync, actor {actor}'s vLLM worker {worker} holds {piece} unlike the learner: "
                f"they differ by about {seen.gap(want):.3g} in norm (the learner's is {want.norm():.3g})"
                + (f"; {len(wrong) - 1} more differ: {others}" if len(wrong) > 1 else "")
                + ". The actors are not sampling from the trained policy, so the run stops."
            )
