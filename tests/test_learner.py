"""The DeepSpeed learner on 2 CPU ranks (gloo) with the tiny model, no mocks.

One torchrun runs every scenario of tests/support/learner_worker.py (each DeepSpeed start costs
seconds); the tests check what it wrote.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from support.greedy import assert_same_greedy, hf_greedy
from support.learner_worker import NUM_SAMPLES, SCENARIOS  # tests/ is on sys.path (pytest's prepend import mode)
from support.sync import StateWeights, broadcast_to
from transformers import AutoModelForCausalLM, AutoTokenizer

from oat_cpgd.algorithms import group_advantages
from oat_cpgd.cluster import free_port
from oat_cpgd.learners.batch import by_token_budget

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "support" / "learner_worker.py"
REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2

METRICS = {
    "train/pg_loss",
    "train/policy_drift",
    "train/clip_frac",
    "train/entropy",
    "train/grad_norm",
    "train/adv_mean",
    "train/adv_std",
    "train/reward_mean",
    "train/shaped_reward_mean",
    "train/all_correct_groups",
    "train/all_wrong_groups",
    "train/response_len",
    "train/logprob_gap_actor_learner",
    "train/is_weight_mean",
    "train/is_weight_max",
    "train/is_capped_frac",
    "train/lr",
    "misc/learn_time",
    "misc/learner_threads",
}
PPO_METRICS = {"train/value_loss", "train/value_clip_frac", "train/explained_variance"}
LAST_SCENARIO = list(SCENARIOS)[-1]


@pytest.fixture(scope="module")
def results(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("learner")
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD_SIZE}"]
    worker = [str(WORKER), f"--model={tiny_model_path}", f"--out={out}", f"--dump-state={out / 'dump.safetensors'}"]
    command = [*launcher, f"--master_port={free_port()}", *worker]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=550)
    assert run.returncode == 0, f"learner worker failed:\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}"
    return out


def result(results: Path, name: str) -> dict:
    return json.loads((results / f"{name}.json").read_text())


def state(results: Path, name: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(results / f"{name}.safetensors")


SIGN_SCENARIOS = ["ppo", "grpo", "drgrpo", "cpgd", "rloo", "gspo", "cispo", "gmpo", "registered_at_run_time",
                  "grpo_lora_zero3"]  # fmt: skip


def test_every_built_in_algorithm_is_checked_for_the_sign_of_its_update() -> None:
    """The loop tests train only some algorithms (tests/test_loop.py); the others' updates are checked here,
    and REINFORCE++-baseline's (whose advantages are whitened over the batch, so not signed as the rewards)
    against plain torch's gradient."""
    from oat_cpgd.algorithms.registry import ALGORITHMS, REGISTERED_BY

    built_in = set(ALGORITHMS) - set(REGISTERED_BY)
    signed = {SCENARIOS[name].flags["critic_type"] for name in SIGN_SCENARIOS}
    assert built_in - signed == {"reinforce_pp_baseline"}
    assert "reinforce_pp_baseline" in GRADIENT_SCENARIOS


@pytest.mark.parametrize("name", SIGN_SCENARIOS)
def test_learn_moves_logprobs_with_the_advantage(results: Path, name: str) -> None:
    """One on-policy step: responses with a positive advantage gain log-prob, the others lose it."""
    run = result(results, name)
    for reward, before, after in zip(run["rewards"], run["logp_before"], run["logp_after"], strict=True):
        if reward > 0:
            assert after > before + 1, (reward, before, after)
        else:
            assert after < before - 1, (reward, before, after)
    metrics = run["metrics"]
    # The learner's recomputed log-probs equal plain torch's (padding, masks, temperature), and
    # the first mini-batch is on-policy: nothing clipped, no drift.
    # The gap is now the k3 KL, about d^2 / 2 for a log-prob difference d: this is |d| < ~1e-5, as before.
    assert metrics["train/logprob_gap_actor_learner"] < 5e-11
    assert metrics["train/clip_frac"] == 0
    assert abs(metrics["train/policy_drift"]) < 1e-6


FINITE_SCENARIOS = [name for name in SCENARIOS if not name.startswith("grpo_nan")]


@pytest.mark.parametrize("name", FINITE_SCENARIOS)
def test_metrics_are_complete_finite_and_the_same_on_every_rank(results: Path, name: str) -> None:
    run = result(results, name)
    metrics = run["metrics"]
    expected = METRICS | (PPO_METRICS if SCENARIOS[name].flags["critic_type"] == "ppo" else set())
    if SCENARIOS[name].flags.get("beta", 0) > 0 or SCENARIOS[name].flags.get("kl_penalty_coef", 0) > 0:
        expected |= {"train/ref_kl"}
    assert expected <= set(metrics), expected - set(metrics)
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    rewards = torch.tensor(run["rewards"])
    groups = rewards.view(-1, NUM_SAMPLES)
    assert metrics["train/reward_mean"] == pytest.approx(rewards.mean().item())
    assert metrics["train/all_correct_groups"] == pytest.approx((groups >= 1).all(-1).float().mean().item())
    assert metrics["train/all_wrong_groups"] == pytest.approx((groups <= 0).all(-1).float().mean().item())
    assert metrics["train/response_len"] == pytest.approx(sum(run["response_lengths"]) / len(rewards))
    assert metrics["train/entropy"] > 0
    if name != "grpo_stale_mis":  # every token masked there
        assert metrics["train/grad_norm"] > 0


GRADIENT_SCENARIOS = ["grpo", "grpo_micro1", "reinforce_pp_baseline", "grpo_stale_tis"]


@pytest.mark.parametrize("name", GRADIENT_SCENARIOS)
def test_gradient_equals_plain_torch_on_the_whole_batch(results: Path, name: str) -> None:
    """Exact accumulation over ranks and micro-batches: the loss weights undo DeepSpeed's rank
    average and accumulation division, so the gradient is that of the whole mini-batch loss.
    REINFORCE++-baseline whitens over the whole batch (not per rank); tis weighs every token by min(4, 2)."""
    run = result(results, name)
    assert run["metrics"]["train/grad_norm"] == pytest.approx(run["reference_grad_norm"], rel=1e-5)


def test_truncated_importance_weights_for_a_stale_behaviour_policy(results: Path) -> None:
    """The actor sampled with log-probs ln 4 below the learner's: w = 4 everywhere, truncated to C = 2
    (the gradient doubles, above); mis drops every token, so nothing is learned."""
    for name in ("grpo_stale_tis", "grpo_stale_mis"):
        metrics = result(results, name)["metrics"]
        assert metrics["train/is_weight_mean"] == pytest.approx(4, rel=1e-4)
        assert metrics["train/is_weight_max"] == pytest.approx(4, rel=1e-4)
        assert metrics["train/is_capped_frac"] == 1.0
        # k3 of the gap: w - 1 - ln w = 3 - ln 4 = 1.613706
        assert metrics["train/logprob_gap_actor_learner"] == pytest.approx(3 - math.log(4), rel=1e-4)
    assert result(results, "grpo_stale_tis")["metrics"]["train/grad_norm"] == pytest.approx(
        2 * result(results, "grpo")["metrics"]["train/grad_norm"], rel=1e-5
    )
    mis = result(results, "grpo_stale_mis")
    assert mis["metrics"]["train/grad_norm"] == 0.0 and mis["logp_after"] == pytest.approx(mis["logp_before"])


def test_a_non_finite_update_is_skipped_on_every_rank(results: Path, tiny_model_path: Path) -> None:
    """Rank 0's first mini-batch has a NaN reward: that optimizer step is skipped on both ranks (the
    gradient norm is global) and counted; the second step, finite everywhere, applies."""
    run = result(results, "grpo_nan_reward")
    metrics = run["metrics"]
    assert metrics["train/skipped_steps"] == 1
    assert math.isnan(metrics["train/reward_mean"]) and math.isnan(metrics["train/pg_loss"])  # NaN, not null
    moved = [abs(after - before) > 1e-3 for before, after in zip(run["logp_before"], run["logp_after"], strict=True)]
    assert all(moved)  # the applied step moved every response, rank 0's included
    weights = state(results, "grpo_nan_reward")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_too_many_skipped_updates_stop_the_run(results: Path, tiny_model_path: Path) -> None:
    run = result(results, "grpo_nan_abort")
    assert "2 optimizer steps in a row" in run["error"] and "--max_skipped_steps 1" in run["error"]
    assert run["logp_after"] == pytest.approx(run["logp_before"])  # nothing was applied
    initial = safetensors.torch.load_file(tiny_model_path / "model.safetensors")
    weights = state(results, "grpo_nan_abort")
    assert all(torch.equal(weights[name], tensor) for name, tensor in initial.items())


def test_top_p_weights_compare_with_the_renormalised_learner(results: Path) -> None:
    """Under --top_p the learner's side of w is restricted to the kept tokens and renormalised, from
    the same forward as its full-vocabulary log-probs. The actor log-probs here are full-vocabulary
    ones, so a learner comparing full with full would give w = 1 everywhere; plain torch's top-p
    weights (0 for the random tokens top-p cuts off, > 1 for kept ones) are far from that.
    The metric is their mean over all response tokens: the ranks hold different token counts, so a
    mean of the ranks' own means would differ."""
    run = result(results, "grpo_top_p")
    token_mean = assert_token_mean_differs_from_mean_of_rank_means(run["top_p_weights"])
    assert abs(token_mean - 1) > 0.05
    assert run["metrics"]["train/is_weight_mean"] == pytest.approx(token_mean, rel=1e-4)
    # The loss still uses the full-vocabulary log-probs: the first mini-batch is on-policy.
    assert run["metrics"]["train/clip_frac"] == 0 and abs(run["metrics"]["train/policy_drift"]) < 1e-6


def test_kl_penalty_shapes_the_group_rewards(results: Path) -> None:
    """All rewards equal: only the reward shaping by the KL to a different reference gives advantages."""
    metrics = result(results, "grpo_kl_shaping")["metrics"]
    assert metrics["train/ref_kl"] > 1e-3
    assert metrics["train/adv_std"] > 0.1 and metrics["train/grad_norm"] > 0
    assert metrics["train/reward_mean"] == 1.0  # the oracle's rewards, as logged, are unshaped
    assert abs(metrics["train/shaped_reward_mean"] - 1.0) > 1e-3  # the ones the advantages come from are


def test_the_learner_shapes_the_oracle_rewards_with_the_length_penalties(results: Path) -> None:
    """Scenario "ppo": --reward_scale 10 times (the oracle's reward, --non_stop_penalty -0.1 when truncated,
    and DAPO's overlong punishment -0.2 * (L - 8) / 8 beyond 8 of the 16 tokens). train/reward_mean
    stays the oracle's; train/shaped_reward_mean sums GAE's per-token rewards over each response."""
    run = result(results, "ppo")
    lengths, truncated = run["response_lengths"], run["truncated"]
    assert any(truncated) and max(lengths) > 8  # both penalties apply somewhere
    expected = [
        10 * (reward - 0.1 * cut + min(0.0, -0.2 * (length - 8) / 8))
        for reward, cut, length in zip(run["rewards"], truncated, lengths, strict=True)
    ]
    assert run["metrics"]["train/shaped_reward_mean"] == pytest.approx(sum(expected) / len(expected))
    assert run["metrics"]["train/reward_mean"] == pytest.approx(sum(run["rewards"]) / len(run["rewards"]))


def assert_token_mean_differs_from_mean_of_rank_means(per_response: list[list[float]]) -> float:
    """The mean of per-token values over all responses, checked to be unlike the mean of each rank's
    own token mean (the ranks hold different token counts), so that a metric equal to it is one
    averaged over all tokens."""
    values = [torch.tensor(response) for response in per_response]
    per_rank = len(values) // WORLD_SIZE  # each rank holds a contiguous share of the responses
    shards = [torch.cat(values[rank * per_rank : (rank + 1) * per_rank]) for rank in range(WORLD_SIZE)]
    token_mean = float(torch.cat(values).mean())
    mean_of_rank_means = sum(float(shard.mean()) for shard in shards) / WORLD_SIZE
    assert abs(mean_of_rank_means - token_mean) > 1e-3 * abs(token_mean), (mean_of_rank_means, token_mean)
    return token_mean


def test_reference_kl_loss_changes_the_gradient(results: Path) -> None:
    """beta * k3(ref, policy) with a reference unlike the policy: a different gradient from plain GRPO's.
    train/ref_kl is the k3 estimate averaged over all ranks' response tokens, as plain torch gives it."""
    run = result(results, "grpo_ref_kl_loss")
    with_kl, plain = run["metrics"], result(results, "grpo")["metrics"]
    assert with_kl["train/ref_kl"] > 1e-3
    assert with_kl["train/ref_kl"] == pytest.approx(
        assert_token_mean_differs_from_mean_of_rank_means(run["reference_kls"]), rel=1e-4
    )
    assert abs(with_kl["train/grad_norm"] - plain["train/grad_norm"]) > 0.01 * plain["train/grad_norm"]


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("grpo", "grpo_micro1"),
        ("ppo_two_steps", "ppo_two_steps_micro1"),
        ("grpo", "grpo_zero3"),
        ("grpo", "grpo_packed"),
        ("grpo_zero3", "grpo_zero3_packed"),
        ("ppo_two_steps", "ppo_two_steps_packed"),
        ("grpo", "grpo_chunked"),
        ("grpo_zero3", "grpo_zero3_chunked"),
        ("grpo_zero3_packed", "grpo_zero3_packed_chunked"),
        ("ppo_two_steps", "ppo_two_steps_chunked"),
    ],
    ids=[
        "grpo-micro-batch-4-vs-1",
        "ppo-two-steps-micro-batch-4-vs-1",
        "grpo-zero2-vs-zero3",
        "grpo-micro-batch-4-vs-packed",
        "grpo-zero3-micro-batch-4-vs-packed",
        "ppo-two-steps-micro-batch-4-vs-packed",
        "grpo-whole-vs-chunked-output-layer",
        "grpo-zero3-whole-vs-chunked-output-layer",
        "grpo-zero3-packed-whole-vs-chunked-output-layer",
        "ppo-two-steps-whole-vs-chunked-output-layer",
    ],
)
def test_same_learn_gives_the_same_weights(results: Path, tiny_model_path: Path, name: str, other: str) -> None:
    """Micro-batching and the ZeRO stage change only float rounding.

    Adam's first step is g / (|g| + eps) per element: the few elements whose gradient is
    near eps (|g| ~ 1e-7, the median is ~1e-3) turn rounding into up to ~0.1 lr, so the
    updates are compared as a whole, along with the resulting log-probs and metrics.
    """
    initial = safetensors.torch.load_file(tiny_model_path / "model.safetensors")
    weights, other_weights = state(results, name), state(results, other)
    assert weights.keys() == other_weights.keys() == initial.keys() | {"lm_head.weight"}  # + the tied head
    update_gap = sum((weights[k] - other_weights[k]).pow(2).sum() for k in initial).sqrt()
    update = sum((weights[k] - initial[k]).pow(2).sum() for k in initial).sqrt()
    assert update > 0.1
    assert update_gap / update < 1e-3
    run, other_run = result(results, name), result(results, other)
    assert other_run["logp_after"] == pytest.approx(run["logp_after"], rel=1e-4)
    for metric, value in run["metrics"].items():
        if metric != "misc/learn_time":
            assert other_run["metrics"][metric] == pytest.approx(value, rel=1e-4, abs=1e-5), metric


def test_packed_scenarios_cut_the_ranks_into_different_counts(results: Path) -> None:
    """The packed comparisons above cover stand-in micro-batches: the ranks' token budgets cut their
    responses into different numbers of micro-batches, and the rank with fewer adds stand-ins."""
    lengths = torch.tensor(result(results, "grpo_packed")["sequence_lengths"])
    budget = SCENARIOS["grpo_packed"].flags["train_max_tokens_per_device"]
    counts = [len(by_token_budget(shard, budget)) for shard in lengths.chunk(WORLD_SIZE)]
    assert counts[0] != counts[1] and min(counts) > 1, counts


def test_cpgd_drift_grows_with_epochs_and_its_term_holds_it_back(results: Path) -> None:
    """train/policy_drift is the k3 gap to the proximal policy: 0 for one on-policy epoch, large once
    later epochs restart from an updated policy. The drift term (alpha = --policy_drift_coeff) pulls
    back towards the proximal policy: a strong one keeps the drift well below alpha = 0's."""
    # The drift, averaged over the 3 epochs' steps, is (0 + d2 + d3) / 3.
    one_epoch = result(results, "cpgd")["metrics"]["train/policy_drift"]
    free = result(results, "cpgd_three_epochs")["metrics"]["train/policy_drift"]
    held = result(results, "cpgd_three_epochs_strong_drift")["metrics"]["train/policy_drift"]
    assert abs(one_epoch) < 1e-6
    assert free > 1.0, free
    assert 0 < held < 0.5 * free, (held, free)


def test_clip_filter_weight_counts_groups_of_the_whole_batch(results: Path) -> None:
    """Rank 0 holds an all-correct and an all-wrong group, rank 1 two groups with signal: the
    weight min(3, G / G_nonzero) is 4 / 2 = 2 over the whole batch (1 on rank 1 alone)."""
    run = result(results, "cpgd_zero3_bf16")
    advantages = group_advantages(
        torch.tensor(run["rewards"]), NUM_SAMPLES, weight="clip_filter", clip_filter_max_weight=3.0
    )
    lengths = torch.tensor(run["response_lengths"], dtype=torch.float)
    # Token-weighted over the whole batch's response tokens.
    mean = (advantages * lengths).sum() / lengths.sum()
    std = (((advantages - mean) ** 2 * lengths).sum() / lengths.sum()).sqrt()
    assert run["metrics"]["train/adv_mean"] == pytest.approx(float(mean), rel=1e-5)
    assert run["metrics"]["train/adv_std"] == pytest.approx(float(std), rel=1e-5)


@pytest.mark.parametrize("name", ["cpgd_zero3_bf16", "ppo_zero2_bf16"])
def test_bf16_features_run(results: Path, name: str) -> None:
    """bf16, offloads, gradient checkpointing, reference model, schedules with warm-up, two epochs."""
    run = result(results, name)
    metrics = run["metrics"]
    assert all(tensor.dtype == torch.bfloat16 for tensor in state(results, name).values())
    assert metrics["train/ref_kl"] == pytest.approx(0, abs=1e-6)  # the reference is the initial policy
    assert 0 < metrics["train/lr"] < 1e-3  # the mean over steps of a schedule that starts at 0
    assert metrics["train/policy_drift"] > 0  # later mini-batches are off-policy
    if name == "ppo_zero2_bf16":  # --whiten_adv, over the whole batch
        assert metrics["train/adv_mean"] == pytest.approx(0, abs=1e-5)
        assert metrics["train/adv_std"] == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("name", ["grpo_zero3", "grpo_lora_zero3"])
def test_save_pretrained_loads_with_the_synced_weights(results: Path, name: str) -> None:
    """Plain transformers loads what was synced; with LoRA that is the merged model, no peft needed."""
    saved = results / f"{name}_saved"
    synced = state(results, name)
    # The sync also sends the tied lm_head, which the checkpoint stores once, as the embedding.
    assert safetensors.torch.load_file(saved / "model.safetensors").keys() | {"lm_head.weight"} == synced.keys()
    model = AutoModelForCausalLM.from_pretrained(saved)
    loaded = model.state_dict()
    for name, tensor in synced.items():
        assert torch.equal(loaded[name], tensor), name
    assert torch.equal(model.lm_head.weight, synced["model.embed_tokens.weight"])  # tied, saved once
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_lora_trains_the_adapter_alone_and_syncs_the_merged_model(results: Path, tiny_model_path: Path) -> None:
    """ZeRO-3 + LoRA: the optimizer holds only the adapter of every attention and MLP projection, so
    the base model's other weights (embeddings, norms, biases) are untouched; the sync sends the merged
    weights under the base model's names, whose log-probs are the learner's own (adapter on top)."""
    run = result(results, "grpo_lora_zero3")
    config = AutoModelForCausalLM.from_pretrained(tiny_model_path).config
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(".lora_A." in name or ".lora_B." in name for name in run["trained"]), run["trained"]
    assert len(run["trained"]) == 2 * len(projections) * config.num_hidden_layers
    initial = safetensors.torch.load_file(tiny_model_path / "model.safetensors")
    synced = state(results, "grpo_lora_zero3")
    assert synced.keys() == initial.keys() | {"lm_head.weight"}
    for name, tensor in initial.items():
        projection_weight = name.split(".")[-2] in projections and name.endswith(".weight")
        assert torch.equal(synced[name], tensor) != projection_weight, name  # only the merged projections moved
    assert run["merged_logp_after"] == pytest.approx(run["logp_after"], abs=1e-4)


def test_lora_checkpoint_holds_the_adapter_and_the_merged_policy(results: Path, tiny_model_path: Path) -> None:
    """The checkpoint's policy/ is the merged model; its policy_adapter/ is the adapter in peft's format,
    which peft's own merge onto the base model turns into the same weights."""
    from peft import PeftModel

    checkpoint, synced = results / "grpo_lora_zero3_checkpoint", state(results, "grpo_lora_zero3")
    policy = safetensors.torch.load_file(checkpoint / "policy" / "model.safetensors")
    assert all(torch.equal(policy[name], synced[name]) for name in policy)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, checkpoint / "policy_adapter").merge_and_unload().state_dict()
    for name, tensor in policy.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("name", "roles"),
    [("ppo", {"policy", "critic"}), ("grpo_lora_zero3", {"policy"}), ("cpgd_zero3_bf16", {"policy", "reference"})],
)
def test_zero3_models_load_the_checkpoint_exactly(results: Path, tiny_model_path: Path, name: str, roles: set) -> None:
    """Under ZeRO-3 each rank builds its partitions inside deepspeed.zero.Init and rank 0 fills each layer
    from the checkpoint: gathered, every weight is the checkpoint's (cast to bf16 where the run is), the
    LoRA-wrapped policy's too (B = 0 merges to the base), and the critic's new value head is zero."""
    loaded = result(results, name)["loaded"]
    checkpoint = safetensors.torch.load_file(tiny_model_path / "model.safetensors")
    assert loaded.keys() == roles
    for role, report in loaded.items():
        assert report["compared"] == len(checkpoint) and report["differing"] == [], (role, report)
        assert report["new"] == ({"score.weight": 0.0, "score.bias": 0.0} if role == "critic" else {}), (role, report)


ZERO3_LOADING = """
import json, os, sys
import deepspeed
from transformers.integrations import is_deepspeed_zero3_enabled
from oat_cpgd.args import PPOArgs
from oat_cpgd.learners.deepspeed_config import train_config
from oat_cpgd.learners.engines import load_critic, load_language_model
deepspeed.init_distributed()
out = {}
for stage in (2, 3):
    args = PPOArgs(pretrain=sys.argv[1], zero_stage=stage)
    args.resolve()
    config = train_config(args, 1, 1e-3, on_cuda=False)
    models = [load_language_model(args.pretrain, args, config), load_critic(args, config)]
    # A ZeRO-3 parameter built under zero.Init holds an empty tensor; its partition is in ds_tensor.
    out[stage] = [hasattr(p, "ds_id") and p.numel() == 0 for model in models for p in model.parameters()]
    out[f"{stage} flag left set"] = is_deepspeed_zero3_enabled()
print(json.dumps(out))
"""


def test_zero3_models_are_partitioned_as_they_load(tiny_model_path: Path) -> None:
    """Under ZeRO-3 the policy and critic come out of from_pretrained partitioned (built inside
    deepspeed.zero.Init): no rank holds a whole model in host memory. Under ZeRO-2 they are whole,
    and transformers' ZeRO-3 switch is cleared after each load."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", ZERO3_LOADING, str(tiny_model_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    partitioned = json.loads(done.stdout.strip().splitlines()[-1])
    assert partitioned["3"] and all(partitioned["3"]) and not any(partitioned["2"])
    assert not partitioned["2 flag left set"] and not partitioned["3 flag left set"]


def test_dump_state_writes_the_last_synced_state(results: Path) -> None:
    dumped = safetensors.torch.load_file(results / "dump.safetensors")
    last = state(results, LAST_SCENARIO)
    assert dumped.keys() == last.keys()
    assert all(torch.equal(dumped[name], last[name]) for name in last)


def greedy_logprobs(model: torch.nn.Module, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """The model's log-probs of `answer`'s tokens after `prompt`."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
    return logp.gather(-1, torch.tensor(answer)[:, None])[:, 0]


def test_synced_weights_in_the_actor_reproduce_the_learner(results: Path, tiny_model_path: Path) -> None:
    """The synced weights broadcast into a real vLLM actor (built on the initial weights) give the trained model's outputs."""
    from oat_cpgd.actors import Actor
    from oat_cpgd.args import PPOArgs
    from oat_cpgd.placement import local_nodes, plan_placement

    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    trained = AutoModelForCausalLM.from_pretrained(results / "grpo_zero3_saved", dtype=torch.float32).eval()
    args = PPOArgs(
        pretrain=str(tiny_model_path),
        oracle="gsm8k",
        critic_type="grpo",
        num_samples=2,
        generate_max_length=16,
        eval_generate_max_length=16,
        prompt_max_length=64,
        rollout_batch_size=2,
        train_batch_size=2,
        oracle_workers=1,
    )
    args.resolve()
    actor = Actor(args, plan_placement(local_nodes(), args))
    try:
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
        prompts = [tokenizer(t)["input_ids"] for t in ("Using the numbers [3, 5, 7]", "Natalia sold 48 clips")]
        broadcast_to(actor, StateWeights(state(results, "grpo_zero3")))
        samples = [
            g[0] for g in actor.generate(prompts, Actor.sampling_params(n=1, temperature=0.0, top_p=1.0, max_tokens=16))
        ]
    finally:
        actor.close()
    assert_same_greedy([s.token_ids for s in samples], hf_greedy(trained, prompts, 16), trained, 16)
    for prompt, sample in zip(prompts, samples, strict=True):
        # The actor scores its tokens as the trained model does, and measurably unlike the initial one.
        actor_logp = torch.tensor(sample.logprobs)
        assert torch.allclose(actor_logp, greedy_logprobs(trained, prompt, sample.token_ids), atol=1e-3)
        assert (actor_logp - greedy_logprobs(initial, prompt, sample.token_ids)).abs().max() > 1e-2
