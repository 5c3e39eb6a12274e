"""The engine-side weight digest (oat_cpgd.weight_digest): its pieces on their own."""

import pytest
import torch

from oat_cpgd.roles import WeightSyncError
from oat_cpgd.weight_digest import (
    CHUNK,
    Piece,
    WeightDigestError,
    compare,
    digest,
    expected_digests,
    linear_layout,
)


# ---------------------------------------------------------------------------- the digest itself
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_checksum_sees_one_changed_bit_and_a_moved_block(dtype):
    weight = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert digest(weight) == digest(weight.clone())
    nudged = weight.clone()
    nudged.view(torch.int16 if dtype == torch.bfloat16 else torch.int32)[5, 7] += 1  # one unit in the last place
    assert not torch.equal(nudged, weight) and digest(nudged).checksum != digest(weight).checksum
    swapped = weight[[1, 0, *range(2, 64)]]  # the same values, two rows exchanged
    assert digest(swapped).checksum != digest(weight).checksum
    assert digest(swapped).gap(digest(weight)) > 0


def test_blocks_of_a_long_tensor_are_told_apart():
    """Past one chunk, positions repeat in the weight table: the chunk's own weight must tell them apart."""
    flat = torch.randn(2 * CHUNK, generator=torch.Generator().manual_seed(1))
    halves_swapped = torch.cat([flat[CHUNK:], flat[:CHUNK]])
    assert digest(halves_swapped).checksum != digest(flat).checksum


def test_a_negative_zero_is_zero():
    """A kernel that reads a zero weight back may return -0.0 for it (see held_weights)."""
    weight = torch.tensor([[0.0, 1.5], [-2.0, 0.0]])
    assert digest(weight) == digest(torch.tensor([[-0.0, 1.5], [-2.0, -0.0]]))


def test_the_gap_estimates_the_norm_of_the_difference():
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(256, 256, generator=generator)
    delta = 1e-3 * torch.randn(256, 256, generator=generator)
    estimate = digest(weight + delta).gap(digest(weight))
    assert 0.3 < estimate / delta.norm() < 3  # four projections: the right size, not precise
    assert 0.3 < digest(weight).norm() / weight.norm() < 3


def test_a_piece_is_a_slice_of_the_learners_tensor_in_the_workers_dtype():
    tensor = torch.arange(24.0).reshape(4, 6)
    assert torch.equal(Piece("w", 1, 2, 3, "bfloat16").of(tensor), tensor[:, 2:5].bfloat16())
    assert torch.equal(Piece("w", 0, 1, 2, "float32").of(tensor), tensor[1:3])
    assert torch.equal(Piece("w", None, 0, 0, "float32").of(tensor), tensor)
    assert str(Piece("w", 1, 2, 3, "float32")) == "w [:, 2:5]" and str(Piece("w", 0, 1, 2, "float32")) == "w [1:3]"


# ---------------------------------------------------------------------------- where vLLM holds each tensor
def layer(cls, **attributes):
    """A vLLM linear layer of tensor-parallel rank `tp_rank` with the attributes its __init__ sets from the
    model's shapes, without the process group that __init__ needs (a unit test of `linear_layout` alone)."""
    module = cls.__new__(cls)
    module.__dict__.update(attributes)
    return module


def test_qkv_rows_per_rank_with_fewer_kv_heads_than_ranks():
    """4 q heads and 1 kv head of size 8 over 2 ranks: each rank holds 2 q heads and the (replicated) kv head."""
    from vllm.model_executor.layers.linear import QKVParallelLinear

    names = ["q_proj", "k_proj", "v_proj"]
    shape = dict(num_heads=2, num_kv_heads=1, head_size=8, v_head_size=8, num_kv_head_replicas=2, tp_size=2)
    rank_0, rank_1 = (linear_layout(layer(QKVParallelLinear, tp_rank=r, **shape), names) for r in (0, 1))
    # (name, dim, offset in the fused layer, offset in the learner's tensor, rows)
    assert rank_0 == [("q_proj", 0, 0, 0, 16), ("k_proj", 0, 16, 0, 8), ("v_proj", 0, 24, 0, 8)]
    assert rank_1 == [("q_proj", 0, 0, 16, 16), ("k_proj", 0, 16, 0, 8), ("v_proj", 0, 24, 0, 8)]


def test_merged_rows_and_row_parallel_columns_per_rank():
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear

    gate_up = layer(MergedColumnParallelLinear, output_sizes=[64, 64], tp_rank=1, tp_size=2)
    assert linear_layout(gate_up, ["gate_proj", "up_proj"]) == [("gate_proj", 0, 0, 32, 32), ("up_proj", 0, 32, 32, 32)]
    down = layer(RowParallelLinear, input_size_per_partition=32, tp_rank=1, tp_size=2)
    assert linear_layout(down, ["down_proj"]) == [("down_proj", 1, 0, 32, 32)]


# ---------------------------------------------------------------------------- the comparison
def test_a_difference_names_the_piece_and_its_size():
    generator = torch.Generator().manual_seed(3)
    weights = {"a.weight": torch.randn(8, 4, generator=generator), "b.weight": torch.randn(8, 4, generator=generator)}
    pieces = [Piece("a.weight", 0, 0, 8, "float32"), Piece("b.weight", 1, 2, 2, "float32")]
    expected, sent = expected_digests(weights.items(), pieces)
    assert sent == ["a.weight", "b.weight"]
    held = [(piece, digest(piece.of(weights[piece.name]))) for piece in pieces]
    compare([[held]], expected, sent)  # the same weights: no alarm

    off = weights["b.weight"].clone()
    off[:, 2:4] += 0.5
    wrong = [held[0], (pieces[1], digest(pieces[1].of(off)))]
    with pytest.raises(WeightDigestError, match=r"actor 0's vLLM worker 0 holds b\.weight \[:, 2:4\] unlike") as error:
        compare([[wrong]], expected, sent)
    assert isinstance(error.value, WeightSyncError)  # the loop's sync-check error
    # |delta| = 0.5 * 4 elements = 1.0, estimated from four projections.
    gap = float(str(error.value).split("differ by about ")[1].split(" ")[0])
    assert 0.3 < gap < 3


def test_a_tensor_no_worker_holds_is_an_error():
    weights = {"a.weight": torch.ones(2), "b.weight": torch.ones(2)}
    piece = Piece("a.weight", None, 0, 0, "float32")
    expected, sent = expected_digests(weights.items(), [piece])
    with pytest.raises(WeightDigestError, match=r"holds no weight for \['b\.weight'\]"):
        compare([[[(piece, expected[piece])]]], expected, sent)
