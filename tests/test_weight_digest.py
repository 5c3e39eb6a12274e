"""The engine-side weight digest (oat_cpgd.weight_digest): its pieces on their own, then real vLLM engines
that hold the learner's weights, and ones that mishandle them after the bytes arrive (tests/support/sync_faults.py)."""

import pytest
import torch
from support.sync import broadcast_to
from transformers import AutoModelForCausalLM

from oat_cpgd.args import PPOArgs
from oat_cpgd.learners.weights import ModelWeights
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


# ---------------------------------------------------------------------------- real engines
def engine_args(model_path, **overrides) -> PPOArgs:
    args = PPOArgs(pretrain=str(model_path), oracle="gsm8k", critic_type="grpo", num_samples=2,
                   generate_max_length=8, rollout_batch_size=2, train_batch_size=2, oracle_workers=1,
                   **overrides)  # fmt: skip
    args.resolve()
    return args


def start(actor_cls, args):
    from oat_cpgd.placement import local_nodes, plan_placement

    return actor_cls(args, plan_placement(local_nodes(), args))


def trained(model_path, dtype=torch.float32) -> torch.nn.Module:
    """The tiny model after a made-up learning step: every weight moved by about 1e-2 of its size."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            param += 1e-2 * param.abs().mean() * torch.randn(param.shape, generator=generator).to(dtype)
    return model


def check(actor, weights: ModelWeights) -> None:
    """oat_cpgd.weight_digest.check_weights, with the actor and the learner's weights in this process."""
    held = actor.weights_digest()
    expected, sent = expected_digests(weights, {piece for pieces in held for piece, _ in pieces})
    compare([held], expected, sent)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_workers_hold_exactly_what_the_learner_sent(tiny_model_path, dtype):
    """After a sync every piece matches, bit for bit, in both dtypes (linear layers read back through the
    CPU backend's re-packed kernels); before it, they differ. The same for a LoRA policy, whose merged
    weights the learner sends."""
    from oat_cpgd.actors import Actor
    from oat_cpgd.learners.lora import add_lora

    args = engine_args(tiny_model_path, bf16=dtype == "bfloat16", lora_rank=4, lora_alpha=8)
    actor = start(Actor, args)
    try:
        model = trained(tiny_model_path, getattr(torch, dtype))
        with pytest.raises(WeightDigestError, match="model.embed_tokens.weight"):  # the first weight in order
            check(actor, ModelWeights(model))
        broadcast_to(actor, ModelWeights(model))
        check(actor, ModelWeights(model))

        policy = add_lora(model, args)
        with torch.no_grad():  # a trained adapter (a fresh one's B is 0: it would change nothing)
            for name, param in policy.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1, generator=torch.Generator().manual_seed(5))
        with pytest.raises(WeightDigestError, match=r"model.layers.0.self_attn.q_proj.weight \[0:256\]"):
            check(actor, ModelWeights(policy))  # the first weight the adapter changes
        broadcast_to(actor, ModelWeights(policy))
        check(actor, ModelWeights(policy))
    finally:
        actor.close()


ONE_GAP = r"they differ by about [\d.e+-]+ in norm \(the learner's is [\d.e+-]+\)"
"""The size of one piece's difference, and no other piece named after it."""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "named"),
    [
        pytest.param("SkippingActor", r"holds model\.layers\.1\.mlp\.down_proj\.weight \[:, 0:1024\] unlike the "
                                      rf"learner: {ONE_GAP}\. The actors", id="skipped"),
        pytest.param("MisMergedActor", r"holds model\.layers\.0\.self_attn\.o_proj\.weight \[:, 0:256\] unlike the "
                                       rf"learner: {ONE_GAP}\. The actors", id="mis-merged"),
        pytest.param("PermutedActor", r"holds model\.layers\.0\.self_attn\.k_proj\.weight \[0:128\] unlike.*"
                                      r"1 more differ: model\.layers\.0\.self_attn\.v_proj\.weight \[0:128\]\.",
                     id="permuted"),
    ],
)  # fmt: skip
def test_an_engine_that_mishandles_a_weight_after_it_arrived_is_caught(tiny_model_path, fault, named):
    """The engine's own load drops a tensor, adds a small delta to one, or swaps two blocks of a fused one
    (tests/support/sync_faults.py): the digest names that tensor and no other."""
    from support import sync_faults

    actor = start(getattr(sync_faults, fault), engine_args(tiny_model_path))
    try:
        model = trained(tiny_model_path)
        broadcast_to(actor, ModelWeights(model))
        with pytest.raises(WeightDigestError, match=named):
            check(actor, ModelWeights(model))
    finally:
        actor.close()


@pytest.mark.slow
def test_stale_weights_after_sleep_stop_the_run(ray_cluster, tiny_model_path, shared_data, tmp_path):
    """Through the loop (collocated, LoRA under ZeRO-2): the engine restores its pre-sync weights when it
    wakes after the sync; the first sync check stops the run, naming the first tensor the adapter moved."""
    from support.sync_faults import StaleAfterSleepActor
    from test_faults import MOVING  # tests/ is on sys.path
    from test_loop import countdown_args

    from oat_cpgd.interface import run

    args = countdown_args(tiny_model_path, shared_data, tmp_path, "grpo", collocate=True, lora_rank=8, lora_alpha=16,
                          learning_rate=2e-3, **MOVING)  # fmt: skip
    with pytest.raises(WeightDigestError, match=r"holds model\.layers\.0\.self_attn\.q_proj\.weight \[0:256\] unlike"):
        run(args, actor_cls=StaleAfterSleepActor)
    assert not (tmp_path / args.wb_run_name / "metrics.jsonl").read_text()  # stopped at step 1's check
