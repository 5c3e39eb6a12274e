"""The online loop end to end: real Ray, vLLM, DeepSpeed, oracles and data, on the tiny model (CPU)."""

import json
import math
import os
import statistics
from pathlib import Path

import pytest
import torch
from support.greedy import assert_same_greedy, hf_greedy
from transformers import AutoModelForCausalLM

from oat_cpgd.args import CPGDArgs
from oat_cpgd.interface import run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def countdown_args(model, data, tmp_path, critic_type, **overrides) -> CPGDArgs:
    """2 learner ranks, 1 actor, the real countdown oracle on real CountDown rows."""
    values = dict(
        pretrain=str(model),
        critic_type=critic_type,
        gpus=2,
        prompt_data=str(data / "countdown" / "train_head.jsonl"),
        train_split="train[:64]",
        input_key="nums",
        output_key="target,nums",
        prompt_template="countdown",
        oracle="countdown",
        oracle_workers=1,
        num_samples=4,
        rollout_batch_size=4,
        rollout_batch_size_per_device=4,
        train_batch_size=8,
        train_batch_size_per_device=2,
        mini_train_batch_size_per_device=8,
        generate_max_length=16,
        prompt_max_length=256,
        learning_rate=1e-3,
        lr_scheduler="constant",  # the algorithms at a fixed LR (the schedule is tests/test_schedule.py's)
        lr_warmup_ratio=0.0,
        max_steps=2,
        save_path=str(tmp_path),
        wb_run_name=f"{critic_type}-test",
        eval_steps=-1,
        log_samples=2,
    )
    values.update(overrides)
    args = CPGDArgs(**values)
    args.resolve()
    return args


def run_and_check(args: CPGDArgs, tmp_path: Path, actor_cls=None, learner_cls=None) -> list[dict]:
    """Run with the greedy-recording actor (or a subclass); check the metrics and that each actor
    samples as the saved learner model does."""
    from support.loop import GreedyRecordingActor

    run_dir = run(args, learner_cls=learner_cls, actor_cls=actor_cls or GreedyRecordingActor)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, args.max_steps + 1))
    lowest_penalty = min(0.0, args.non_stop_penalty) - args.overlong_penalty_factor
    for row in rows:
        assert 0.0 <= row["actor/reward_mean"] <= 1.0 and 0.0 <= row["train/reward_mean"] <= 1.0  # the oracle's
        # With the length penalties, summed in float32 (-0.05 is -0.05000000447 there).
        assert lowest_penalty - 1e-6 <= row["train/shaped_reward_mean"] <= 1.0
        for key in (
            "train/pg_loss",
            "train/policy_drift",
            "train/clip_frac",
            "train/entropy",
            "train/grad_norm",
            "train/logprob_gap_actor_learner",
            "train/is_weight_mean",
            "train/is_capped_frac",
            "actor/generate_time",
            "actor/verify_time",
            "misc/weight_sync_time",
            "misc/step_time",
            "misc/actor_restarts",
            "misc/learner_restarts",
            "misc/steps_replayed",
        ):
            assert key in row, key
        # Ray's default would be 1: the learner uses its node's cores (half of them while the actors generate).
        share = len(os.sched_getaffinity(0)) // args.gpus  # on CPU, --gpus learner ranks
        assert row["misc/learner_threads"] == max(1, share // 2 if args.asynchronous else share)
    # Synced after every step and checked on the probe, the check collected at the next step (at the last
    # step, at once): vLLM and the learner agree to float error.
    # The first rollout used the initial weights: no sync to check (unless it is also the last step).
    assert ("misc/sync_check_gap" in rows[0]) == (len(rows) == 1)
    assert all(row["misc/sync_check_gap"] < 1e-3 for row in rows[1:]), rows
    if not args.asynchronous:  # synced after every step: each rollout comes from the learner's weights
        assert [r["misc/rollout_weight_version"] for r in rows] == [r["step"] - 1 for r in rows]
        assert all(r["misc/policy_lag"] == 0 for r in rows)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert all(len(s["prompt_indices"]) == args.rollout_batch_size for s in samples)

    model = AutoModelForCausalLM.from_pretrained(run_dir / "final_model", dtype=torch.float32).eval()
    recordings = sorted(run_dir.glob("actor_greedy_*.json"))
    assert len(recordings) == max(1, args.num_actors)  # on CPU, --num_actors (default 1)
    for recording in recordings:  # every actor got the last sync
        recorded = json.loads(recording.read_text())
        assert len(recorded["response_ids"]) == 2
        hf = hf_greedy(model, recorded["prompt_ids"], 16)
        assert_same_greedy(recorded["response_ids"], hf, model, 16)
    return rows


COLLOCATED_START = [
    "actor __init__",  # the engine starts and is waited for (it sizes its KV cache from the free memory)
    "actor sleep",
    "learner __init__",  # only then the learners load their models
    "actor wake_up ['weights']",
    "actor wake_up ['kv_cache']",
]
COLLOCATED_STEP = [
    "actor step",  # the rollout
    "actor sleep",
    "learner learn",
    "learner release_memory",
    "actor wake_up ['weights']",
    "learner sync_weights",
    "actor start_weight_update",
    "actor update_weights",
    "actor finish_weight_update",
    "learner release_memory",
    "actor wake_up ['kv_cache']",
    "actor probe_logprobs",  # the sync check generates: after the KV cache is back
]


def test_collocated_calls_come_in_order_with_wandb_offline(
    ray_cluster, tiny_model_path, shared_data, tmp_path, monkeypatch
):
    """The collocated sequence as the roles receive it (GPU_REVIEW items 4 and 5; on CPU sleep and
    wake_up do nothing, but they are called as on GPUs), and the metrics reach wandb."""
    from support.sequence import RecordingActor, RecordingLearner, calls

    monkeypatch.setenv("WANDB_MODE", "offline")
    args = countdown_args(tiny_model_path, shared_data, tmp_path, "cpgd", collocate=True, use_wb=True)
    rows = run_and_check(args, tmp_path, actor_cls=RecordingActor, learner_cls=RecordingLearner)
    events = calls(tmp_path / args.wb_run_name)
    # Rank 0 drives the sync (the other rank does the rest the same); either may start first.
    rank_0 = next(e["pid"] for e in events if e.get("rank") == 0)
    seen = [
        " ".join([e["role"], e["call"].removesuffix(":start"), *map(str, e["details"])])
        for e in events
        if e["call"].endswith(":start") and (e["role"] == "actor" or e["pid"] == rank_0)
    ]
    assert seen == COLLOCATED_START + COLLOCATED_STEP * args.max_steps
    # Every learner rank starts after the engine has slept, not only rank 0.
    slept = next(e["t"] for e in events if e["call"] == "sleep:end")
    assert all(e["t"] > slept for e in events if e["call"] == "__init__:start" and e["role"] == "learner")
    # wandb's offline run file holds each logged key and value as text in its protobuf records
    # (wandb >= 0.2x has no Python reader for it).
    (records,) = (tmp_path / args.wb_run_name / "wandb").glob("offline-run-*/run-*.wandb")
    logged = records.read_bytes()
    for row in rows:
        for key in ("train/entropy", "train/logprob_gap_actor_learner", "misc/step_time"):
            assert json.dumps(row[key]).encode() in logged, key
    assert all(key.encode() in logged for key in rows[-1])  # the same metrics as metrics.jsonl


def test_asynchronous_with_two_actors(ray_cluster, tiny_model_path, shared_data, tmp_path):
    """One step off-policy: the rollout of step s was sampled with the weights step s - 1 started
    from (after s - 2 updates) while the learner trains on those after s - 1, and the importance
    weights see the gap. Two actors: each takes its own ranks in the weight broadcast, and each
    ends with the learner's weights."""
    args = countdown_args(
        tiny_model_path,
        shared_data,
        tmp_path,
        "grpo",
        asynchronous=True,
        max_steps=4,
        num_actors=2,
        rollout_batch_size_per_device=2,
        # Rewards that differ within every group (CountDown's are 0 everywhere), so every update moves the policy.
        oracle="support.loop:LengthOracle",
        prompt_template="{nums}",
        output_key="target",
    )
    from support.sequence import RecordingLearner, SlowRecordingActor, calls

    rows = run_and_check(args, tmp_path, actor_cls=SlowRecordingActor, learner_cls=RecordingLearner)
    # GPU_REVIEW item 7: no learner rank starts a sync (ZeRO-3 gathers are collectives with a timeout)
    # while a rollout is in flight, though the rollouts (slowed by a second) outlast the learning steps.
    events = calls(tmp_path / args.wb_run_name)
    syncs = [e["t"] for e in events if e["call"] == "sync_weights:start"]
    assert len(syncs) == 2 * args.max_steps  # 2 ranks
    for start in syncs:
        began = sum(e["call"] == "step:start" and e["t"] < start for e in events)
        ended = sum(e["call"] == "step:end" and e["t"] < start for e in events)
        assert began == ended, "a learner began a sync while an actor was still sampling"
    assert [r["misc/rollout_weight_version"] for r in rows] == [0, 0, 1, 2]
    assert [r["misc/policy_lag"] for r in rows] == [0, 1, 1, 1]
    # Step 1 is on-policy up to vLLM/torch numerics; later steps see a whole update's gap.
    gaps = [r["train/logprob_gap_actor_learner"] for r in rows]
    assert gaps[0] < 1e-6 and min(gaps[1:]) > 100 * gaps[0], gaps
    assert all(abs(r["train/is_weight_mean"] - 1) > 1e-4 for r in rows[1:]), rows


SEVENS_TASK = dict(
    oracle="support.loop:SevensOracle",
    prompt_template="{nums}",
    output_key="target",
    train_split="train[:512]",
    num_samples=8,
    rollout_batch_size=8,
    rollout_batch_size_per_device=8,
    train_batch_size=32,
    train_batch_size_per_device=8,
    mini_train_batch_size_per_device=16,
    generate_max_length=12,
    learning_rate=2e-3,
    max_steps=20,
    sync_params_every=1,
    temperature=1.0,
    critic_learning_rate=2e-3,
)
"""A toy task the random tiny model learns in 20 steps: answer with '7's (SevensOracle)."""


def check_the_reward_rises(rows: list[dict]) -> None:
    rewards = [row["actor/reward_mean"] for row in rows]  # the oracle's, before any length penalty
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert end > start + 0.15 and end > 3 * start, rewards


PPO_STEPS = dict(max_steps=25)
"""PPO's advantages wait for its critic (a value head from 0) to fit the sparse early rewards: more steps."""

DAPO = dict(
    loss_agg_mode="token-mean",
    clip_high=0.28,
    dynamic_sampling=True,
    dynamic_sampling_max_draws=2,
    overlong_buffer_len=4,
    overlong_penalty_factor=0.05,
)
"""DAPO's recipe on GRPO: token-mean, clip-higher, dynamic sampling, the soft overlong punishment."""


@pytest.mark.parametrize(
    ("critic_type", "extra_flags"),
    [("ppo", PPO_STEPS), ("grpo", {}), ("cpgd", {}), ("grpo", DAPO)],
    ids=["ppo", "grpo", "cpgd", "dapo"],
)
def test_reward_rises_on_a_learnable_task(
    critic_type, extra_flags, ray_cluster, tiny_model_path, shared_data, tmp_path
):
    """An algorithm end to end (run_and_check: its metrics, and the actor samples as the saved model
    does), and learning: it must raise the share of '7's in its answers, which catches sign errors, and
    more than sign errors: the std normalisation of the group methods and the critic's learning (below).

    One of each kind the loop treats differently: a critic (ppo), a group baseline (grpo), this library's
    own (cpgd), and dynamic sampling (DAPO's recipe). The other algorithms differ from these only in their
    pure loss and advantage functions (tests/test_algorithms_*.py) and are checked in the learner
    (tests/test_learner.py: each one's update moves the log-probs with the advantage's sign)."""
    args = countdown_args(tiny_model_path, shared_data, tmp_path, critic_type, **{**SEVENS_TASK, **extra_flags})
    rows = run_and_check(args, tmp_path)
    check_the_reward_rises(rows)
    if critic_type == "ppo":
        check_the_critic_learns(rows)
    else:
        check_advantage_scale(rows, args.num_samples, args.rollout_batch_size)
    if extra_flags.get("dynamic_sampling"):
        # Early on many groups score all 0: extra prompts are drawn, and the trained share is reported.
        assert sum(row["misc/dynamic_sampling_draws"] for row in rows) > 0
        assert all(row["misc/prompts_drawn"] >= args.rollout_batch_size for row in rows)
        assert all(0 <= row["train/informative_groups"] <= 1 for row in rows)


def informative_share(row: dict) -> tuple[float, bool]:
    """The share of the step's groups whose rewards vary, and whether it is exact.

    Dynamic sampling counts them (train/informative_groups). Otherwise those not all 0 or all 1 (of
    the rewards the learner got; SevensOracle's lie in [0, 1]) bound it: a group can also score,
    say, 0.5 everywhere.
    """
    if "train/informative_groups" in row:
        return row["train/informative_groups"], True
    return 1 - row["train/all_wrong_groups"] - row["train/all_correct_groups"], False


def check_advantage_scale(rows: list[dict], group_size: int, groups: int) -> None:
    """train/adv_std of a group method with 1/std per group: the std of the advantages over the batch's
    response tokens.

    With 1/std per group (grpo, and cpgd's default `std` weight) each group that has signal gets
    advantages of population std sqrt((K - 1) / K), the others 0, so over equally long responses
    adv_std = sqrt(share x (K - 1) / K): 0.94 when every group has signal, and at least
    sqrt((K - 1) / K / groups) = 0.33 when one has. Without the 1/std, SevensOracle's small reward
    spreads (one '7' in 12 characters is a reward of 0.08) give a few hundredths. (Token weighting: the
    20% slack.)
    """
    per_group = (group_size - 1) / group_size
    trained = [row for row in rows if row["train/adv_std"] > 1e-6]
    assert len(trained) >= 2, rows  # the checks below are not vacuous
    for row in rows:
        if informative_share(row)[0] == 0:  # no group with signal: no advantage at all
            assert row["train/adv_std"] < 1e-6, row
    for row in trained:
        share, exact = informative_share(row)
        low, high = math.sqrt(per_group * (share if exact else 1 / groups)), math.sqrt(per_group * share)
        assert 0.8 * low <= row["train/adv_std"] <= 1.2 * high, row


def check_the_critic_learns(rows: list[dict]) -> None:
    """PPO's explained variance, on the steps whose returns vary, rises over the run.

    The value head starts at 0 (explained variance 0). Fitted to the early, nearly constant
    returns, its values' noise dwarfs their variance (very negative); as it learns the spread
    rewards it climbs to about 0 or above. A dead critic stays at 0, a diverging one far below.
    """
    evs = [row["train/explained_variance"] for row in rows if informative_share(row)[0] > 0]
    assert len(evs) >= 4, rows
    early, late = evs[: len(evs) // 2], evs[len(evs) // 2 :]
    assert statistics.median(late) > statistics.median(early) + 0.1, evs
    assert min(evs[-3:]) > -10, evs


def test_an_algorithm_from_its_own_file_trains(ray_cluster, tiny_model_path, shared_data, tmp_path):
    """examples/my_algorithm.py as the README runs it, `--critic_type examples.my_algorithm:REINFORCE` from the
    repository root: the learners (Ray workers) import it from the launch directory and train with it, and its
    own stat is reduced as it declares (a max over micro-batches and ranks)."""
    assert Path.cwd() == REPO  # the launch directory the workers import from
    flags = dict(oracle="support.loop:LengthOracle", wb_run_name="my-algorithm-test")
    args = countdown_args(tiny_model_path, shared_data, tmp_path, "examples.my_algorithm:REINFORCE", **flags)
    rows = run_and_check(args, tmp_path)
    assert all(row["train/grad_norm"] > 0 and row["train/clip_frac"] == 0 for row in rows), rows
    # Two mini-batches a step: the second sees the policy the first moved.
    assert all(row["train/largest_log_ratio"] > 0 for row in rows), rows
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "my-algorithm-test" / "final_model").state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)


def test_evaluation_in_the_loop_matches_the_evaluate_command(ray_cluster, tiny_model_path, shared_data, tmp_path):
    """Evals before the first step, every --eval_steps and after the last; the saved model scores the same alone."""
    from oat_cpgd.experiment.evaluate import evaluate

    eval_flags = dict(eval_split="train[64:70],train[70:74]", eval_steps=2, eval_n=2, eval_temperature=0.0,
                      eval_generate_max_length=12, eval_batch_size=4)  # fmt: skip
    args = countdown_args(tiny_model_path, shared_data, tmp_path, "cpgd", max_steps=3, **eval_flags)
    run_dir = run(args)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["step"] for r in rows if "eval/average/accuracy" in r]
    assert evaluated == [0, 2, 3]
    assert {"eval/train/pass@n", "eval/train_2/maj@n", "eval/train_2/response_len"} <= set(rows[-1])
    results = json.loads((run_dir / "eval" / "step_3.json").read_text())
    assert [len(results["train"]), len(results["train_2"])] == [6, 4]
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    alone = countdown_args(run_dir / "final_model", shared_data, tmp_path, "cpgd", wb_run_name="alone", **eval_flags)
    standalone = json.loads((evaluate(alone) / "metrics.json").read_text())
    assert standalone == {k: v for k, v in rows[-1].items() if k.startswith("eval/")}


def test_lora_learns_syncs_the_merged_model_and_resumes(ray_cluster, tiny_model_path, shared_data, tmp_path):
    """LoRA under ZeRO-2 learns the sevens task; every sync passes the probe check (the learner's
    log-probs with the adapter are the actors' with the merged weights) and each actor's final greedy
    answers are those of final_model, a plain Hugging Face model (run_and_check). Resumed from its
    last checkpoint for one more step, the learner holds the trained adapter the checkpoint keeps."""
    import safetensors.torch
    from support.lora import AdapterRecordingLearner

    lora = dict(SEVENS_TASK, lora_rank=8, lora_alpha=16, learning_rate=1e-2, max_steps=14)
    args = countdown_args(tiny_model_path, shared_data, tmp_path, "grpo", **lora)
    check_the_reward_rises(run_and_check(args, tmp_path))
    run_dir = tmp_path / args.wb_run_name
    assert not (run_dir / "final_model" / "adapter_config.json").exists()

    resumed = countdown_args(
        tiny_model_path, shared_data, tmp_path, "grpo", **{**lora, "max_steps": 15, "resume_dir": str(run_dir)}
    )
    run(resumed, learner_cls=AdapterRecordingLearner)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 16)) and rows[-1]["misc/sync_check_gap"] < 1e-3
    saved = safetensors.torch.load_file(
        run_dir / "checkpoints" / "step_14" / "policy_adapter" / "adapter_model.safetensors"
    )
    restored = safetensors.torch.load_file(run_dir / "restored_adapter.safetensors")
    # peft's files drop the adapter's name ("default") from the parameter names.
    assert {name.replace(".default.", "."): tensor for name, tensor in restored.items()}.keys() == saved.keys()
    assert all(torch.equal(restored[name], saved[name.replace(".default.", ".")]) for name in restored)
    assert any(name.endswith("lora_B.weight") and tensor.abs().max() > 0 for name, tensor in saved.items())  # trained
