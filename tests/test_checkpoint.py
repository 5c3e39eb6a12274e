"""Checkpoints and resume: a crash loses nothing, and a resumed run continues exactly where it stopped."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from support.ray_cluster import kill_cluster  # tests/ is on sys.path
from transformers import AutoModelForCausalLM

from oat_cpgd.checkpoint import (
    MANIFEST_KEY,
    STATE_FILE,
    CheckpointSaveError,
    complete_checkpoints,
    latest_checkpoint,
    load_state,
    save_checkpoint,
)
from oat_cpgd.rollout import prompt_order
from oat_cpgd.run_log import keep_steps_up_to

REPO = Path(__file__).resolve().parents[1]


def write_file(name: str):
    return lambda folder: (folder / name).write_text("weights")


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 2, {"step": 2}, write_file("model"), max_keep=3)

    def crash(folder):
        (folder / "model").write_text("half")
        raise KeyboardInterrupt  # the process dies mid-write

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, {"step": 4}, crash, max_keep=3)
    assert latest_checkpoint(tmp_path).name == "step_2" and load_state(latest_checkpoint(tmp_path)) == {"step": 2}
    assert (latest_checkpoint(tmp_path) / "model").read_text() == "weights"
    # The next save clears the debris and succeeds.
    save_checkpoint(tmp_path, 4, {"step": 4}, write_file("model"), max_keep=3)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_2", "step_4"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_4"]


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (2, 4, 6, 8, 10):
        save_checkpoint(tmp_path, step, {"step": step}, write_file("model"), max_keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_8", "step_10"]  # numeric order, not text


def write_model(folder: Path) -> None:
    """A checkpoint's kind of contents: a weights file in a subfolder and one beside it."""
    (folder / "policy").mkdir()
    (folder / "policy" / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "rng.pt").write_bytes(b"generator state")


def test_the_state_holds_a_manifest_of_every_other_file(tmp_path):
    checkpoint = save_checkpoint(tmp_path, 2, {"step": 2}, write_model, max_keep=3)
    files = json.loads((checkpoint / STATE_FILE).read_text())[MANIFEST_KEY]
    assert sorted(files) == ["policy/model.safetensors", "rng.pt"]
    assert files["rng.pt"][0] == len(b"generator state")
    assert load_state(checkpoint) == {"step": 2}  # the caller's state, without the manifest
    assert latest_checkpoint(tmp_path) == checkpoint


def truncate(checkpoint: Path) -> None:
    weights = checkpoint / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a short write


def delete(checkpoint: Path) -> None:
    (checkpoint / "policy" / "model.safetensors").unlink()


def flip_a_byte(checkpoint: Path) -> None:
    weights = checkpoint / "policy" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[2048] ^= 0xFF  # the same size: only the hash tells
    weights.write_bytes(bytes(data))


def cut_the_state(checkpoint: Path) -> None:
    state = checkpoint / STATE_FILE
    state.write_text(state.read_text()[:20])


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (truncate, "policy/model.safetensors has 1000 bytes, 4096 when saved"),
        (delete, "policy/model.safetensors is missing"),
        (flip_a_byte, "policy/model.safetensors has changed since it was saved"),
        (cut_the_state, "state.json is unreadable"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage, named):
    for step in (2, 4):
        save_checkpoint(tmp_path, step, {"step": step}, write_model, max_keep=3)
    damage(tmp_path / "checkpoints" / "step_4")
    with caplog.at_level(logging.WARNING, logger="oat_cpgd.checkpoint"):
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_2"
    (warning,) = caplog.messages
    assert "step_4 is damaged" in warning and named in warning


def test_a_checkpoint_saved_before_manifests_is_still_used(tmp_path):
    old = tmp_path / "checkpoints" / "step_3"
    old.mkdir(parents=True)
    (old / "model").write_text("weights")
    (old / STATE_FILE).write_text(json.dumps({"step": 3, "prompts_drawn": 12}))  # as older versions wrote it
    assert latest_checkpoint(tmp_path) == old and load_state(old) == {"step": 3, "prompts_drawn": 12}


def test_a_staging_folder_left_by_a_crash_is_not_a_checkpoint_and_goes_at_the_next_save(tmp_path):
    save_checkpoint(tmp_path, 2, {"step": 2}, write_model, max_keep=3)
    left = tmp_path / "checkpoints" / ".tmp-step_4"
    left.mkdir()
    (left / STATE_FILE).write_text(json.dumps({"step": 4}))  # killed between the state and the rename
    assert latest_checkpoint(tmp_path).name == "step_2"
    save_checkpoint(tmp_path, 3, {"step": 3}, write_model, max_keep=3)  # another step: the debris goes too
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3"]


def test_a_failed_save_removes_only_its_staging_folder_and_names_the_intact_previous_one(tmp_path):
    save_checkpoint(tmp_path, 2, {"step": 2}, write_model, max_keep=1)

    def learner_fails(folder):
        write_model(folder)
        raise RuntimeError("rank 1: torch.save failed")

    with pytest.raises(CheckpointSaveError) as failed:
        save_checkpoint(tmp_path, 4, {"step": 4}, learner_fails, max_keep=1)  # max_keep=1: nothing pruned
    previous = tmp_path / "checkpoints" / "step_2"
    assert failed.value.step == 4 and failed.value.previous == previous
    assert str(failed.value) == (
        "saving the step-4 checkpoint failed (RuntimeError: rank 1: torch.save failed); "
        f"the previous checkpoint {previous} is intact"
    )
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_2"]
    assert latest_checkpoint(tmp_path) == previous


def test_a_first_save_that_fails_says_there_is_no_checkpoint(tmp_path):
    def fails(folder):
        raise RuntimeError("no")

    with pytest.raises(CheckpointSaveError, match="there is no earlier checkpoint") as failed:
        save_checkpoint(tmp_path, 1, {"step": 1}, fails, max_keep=2)
    assert failed.value.previous is None and list((tmp_path / "checkpoints").iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a file system that really fills up (mounting needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(small_disk):
    def weights(size: int):
        return lambda folder: (folder / "model.safetensors").write_bytes(os.urandom(size))

    save_checkpoint(small_disk, 2, {"step": 2}, weights(100_000), max_keep=2)
    with pytest.raises(CheckpointSaveError, match="the previous checkpoint .*step_2 is intact") as failed:
        save_checkpoint(small_disk, 4, {"step": 4}, weights(200_000), max_keep=2)  # 300 KB > 256 KiB
    assert isinstance(failed.value.__cause__, OSError) and failed.value.__cause__.errno == errno.ENOSPC
    assert [p.name for p in (small_disk / "checkpoints").iterdir()] == ["step_2"]
    assert latest_checkpoint(small_disk).name == "step_2"
    # The half-written staging folder's space is free again: a save that fits succeeds.
    save_checkpoint(small_disk, 4, {"step": 4}, weights(100_000), max_keep=2)
    assert latest_checkpoint(small_disk).name == "step_4"


def test_saving_after_a_fall_back_keeps_the_new_checkpoint_and_replaces_the_damaged_one(tmp_path):
    """Resumed from step 2 past a damaged step 4: pruning must not count step 4 as newer than what the run saves."""
    for step in (2, 4):
        save_checkpoint(tmp_path, step, {"step": step}, write_model, max_keep=2)
    truncate(tmp_path / "checkpoints" / "step_4")
    assert latest_checkpoint(tmp_path).name == "step_2"
    save_checkpoint(tmp_path, 3, {"step": 3}, write_model, max_keep=1)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_3"]
    assert latest_checkpoint(tmp_path).name == "step_3"
    # The same step saved again takes the old folder's place.
    truncate(tmp_path / "checkpoints" / "step_3")
    save_checkpoint(tmp_path, 3, {"step": 3, "again": True}, write_model, max_keep=1)
    assert load_state(latest_checkpoint(tmp_path)) == {"step": 3, "again": True}


def test_resume_drops_log_rows_after_the_checkpoint(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(5)) + '{"step": 5, "x"')
    keep_steps_up_to(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2]


# PPO with a critic, ZeRO-3, --asynchronous, and 5 prompts: step 2 and step 3 each cross an epoch
# boundary (prompts 4-7 and 8-11 of the stream), one before the kill and one after it.
FLAGS = """--gpus 2 --critic_type ppo --zero_stage 3 --asynchronous --train_split train[:5] --num_prompt_epoch 4
    --input_key nums --output_key target,nums --prompt_template countdown
    --oracle support.loop:LengthOracle --env support.environments:ToolThenAnswer --max_turns 2 --max_episode_tokens 40
    --oracle_workers 1 --num_samples 4 --rollout_batch_size 4 --rollout_batch_size_per_device 4
    --train_batch_size 8 --train_batch_size_per_device 2 --generate_max_length 16 --prompt_max_length 256
    --learning_rate 1e-3 --max_step_adjustment 8 --max_steps 4 --save_steps 2 --max_save_num 3 --eval_steps -1""".split()


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def master_weights(checkpoint: Path, role: str) -> dict[str, torch.Tensor]:
    """The fp32 master weights of `role` (policy or critic), gathered from every rank's ZeRO-3 partitions by
    DeepSpeed's own converter, without the partitions' padding."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / "deepspeed" / role), tag="state")


def deepspeed_states(checkpoint: Path) -> dict[str, dict]:
    """Every file of the DeepSpeed states (both ranks' ZeRO-3 partitions of weights and optimizer,
    the LR scheduler, the shuffling RNG), policy and critic, loaded."""
    return {
        str(path.relative_to(checkpoint)): torch.load(path, map_location="cpu", weights_only=False)
        for path in sorted((checkpoint / "deepspeed").rglob("*.pt"))
    }


def tensors_of(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors nested in a DeepSpeed state, by path, but the raw fp32 master partitions: ZeRO-3 pads
    them with uninitialised memory (see master_weights)."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        state = {key: value for key, value in state.items() if key != "fp32_flat_groups"}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list | tuple) else ()
    return {path: t for key, value in items for path, t in tensors_of(value, f"{prefix}/{key}").items()}


@pytest.mark.slow
@pytest.mark.timeout(900)  # four runs, each with its own Ray cluster
def test_a_run_killed_mid_step_resumes_exactly(tiny_model_path, shared_data, tmp_path):
    """A straight 4-step run, and the same run SIGKILLed in the middle of step 3 (after the step-2
    checkpoint, with step 4's rollout in flight) then resumed, end the same: the same steps, prompts,
    sampled responses and rewards, LR at every step, optimizer states and weights. So does the straight
    run resumed once more after its newest checkpoint was damaged (from the checkpoint before it).

    PPO with a critic, ZeRO-3 and --asynchronous, across epoch boundaries, on two-turn episodes (a tool's
    answer between the model's turns): the checkpoint keeps the in-flight rollout (sampled from weights
    no checkpoint holds), and every turn's samples are seeded by (seed, step, position, prompt, turn),
    so the resumed run samples what the straight one did.
    """
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short, and ours: what the crash leaves is found
    # LengthOracle (tests/support/loop.py): rewards that differ within every group, so every step trains.
    python_path = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": python_path}
    data = str(shared_data / "countdown" / "train_head.jsonl")

    def command(name: str, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "tests" / "support" / "resume.py"), "--pretrain", str(tiny_model_path),
                "--prompt_data", data, "--save_path", str(tmp_path), "--wb-run-name", name, *FLAGS, *extra]  # fmt: skip

    def run_to_the_end(name: str, *extra: str) -> None:
        done = subprocess.run(command(name, *extra), env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-4000:]

    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    try:
        run_to_the_end("whole")

        crashed.mkdir()
        (crashed / "pause_at_step").write_text("3")  # tests/support/resume.py: rank 0 waits inside step 3's update
        process = subprocess.Popen(command("crashed"), env=env, cwd=REPO, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 300
        while not (crashed / "paused_mid_step").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run never reached step 3's update"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kill_cluster(str(ray_tmp))  # the killed run's Ray processes, its workers included
        assert [r["step"] for r in rows(crashed / "metrics.jsonl")] == [1, 2]  # killed inside step 3
        assert [p.name for p in complete_checkpoints(crashed)] == ["step_2"]

        run_to_the_end("crashed", "--resume_dir", str(crashed))
        check_the_same_run(whole, crashed, tiny_model_path)

        # The undisturbed run's newest checkpoint loses the end of a ZeRO optimizer file: resumed, it warns,
        # continues from step 2's, replays steps 3 and 4 exactly, and ends with a sound step-4 checkpoint.
        newest = whole / "checkpoints" / "step_4"
        damaged = sorted(newest.glob("deepspeed/policy/state/*optim_states.pt"))[0]
        damaged.write_bytes(damaged.read_bytes()[:1000])
        run_to_the_end("whole", "--resume_dir", str(whole))
    finally:
        kill_cluster(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    warning = f"checkpoint {newest} is damaged, so an earlier one is used: {damaged.relative_to(newest)} has 1000 bytes"
    assert warning in (whole / "logs" / "driver.log").read_text()
    assert latest_checkpoint(whole) == newest  # saved again, whole
    check_the_same_run(whole, crashed, tiny_model_path)


def check_the_same_run(whole: Path, crashed: Path, tiny_model_path: Path) -> None:
    """The straight run and the crashed one resumed end the same (the docstring above)."""
    # The same steps, prompts (epoch boundaries included) and sampled responses.
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert [r["step"] for r in rows(whole / name)] == [r["step"] for r in rows(crashed / name)] == [1, 2, 3, 4]
    whole_samples, crashed_samples = rows(whole / "samples.jsonl"), rows(crashed / "samples.jsonl")
    assert [r["prompt_indices"] for r in whole_samples] == [r["prompt_indices"] for r in crashed_samples]
    drawn = [prompt_order(5, 42, step, 4) for step in (1, 2, 3, 4)]
    assert [r["prompt_indices"] for r in whole_samples] == drawn
    assert sorted(drawn[0] + drawn[1][:1]) == sorted(drawn[1][1:] + drawn[2][:2]) == [0, 1, 2, 3, 4]  # two epochs
    assert [r["examples"] for r in whole_samples] == [r["examples"] for r in crashed_samples]
    whole_metrics, crashed_metrics = rows(whole / "metrics.jsonl"), rows(crashed / "metrics.jsonl")
    # A resumed run's first step has no sync check to collect (the crashed run's pending one was lost),
    # and its first check digests the weights again.
    checks = {"misc/sync_check_gap", "misc/sync_check_time", "misc/weight_digest_time"}
    assert [set(r) - checks for r in whole_metrics] == [set(r) - checks for r in crashed_metrics]
    assert "misc/sync_check_gap" not in crashed_metrics[2] and "misc/weight_digest_time" in crashed_metrics[2]
    for key in ("train/lr", "actor/reward_mean", "actor/generated_tokens", "misc/rollout_weight_version"):
        assert [r[key] for r in whole_metrics] == [r[key] for r in crashed_metrics], key
    assert len({r["train/lr"] for r in whole_metrics}) == 4  # the schedule moves at every step
    assert {r["actor/turns"] for r in whole_metrics} == {2.0}  # every episode: tool, answer
    assert [r["misc/policy_lag"] for r in crashed_metrics] == [0, 1, 1, 1]  # asynchronous throughout
    for key in ("train/grad_norm", "train/value_loss"):
        torch.testing.assert_close(
            torch.tensor([r[key] for r in crashed_metrics]), torch.tensor([r[key] for r in whole_metrics])
        )

    # The same optimizer, scheduler and ZeRO-3 partitions (policy and critic) in the last checkpoint.
    for run in (whole, crashed):
        assert [p.name for p in complete_checkpoints(run)] == ["step_2", "step_4"]
        assert load_state(latest_checkpoint(run))["step"] == 4
    whole_states, crashed_states = (
        deepspeed_states(latest_checkpoint(whole)),
        deepspeed_states(latest_checkpoint(crashed)),
    )
    assert whole_states.keys() == crashed_states.keys()
    assert any("optim_states" in name for name in whole_states) and any("critic" in name for name in whole_states)
    for name, state in whole_states.items():
        expected, found = tensors_of(state), tensors_of(crashed_states[name])
        assert expected.keys() == found.keys(), name
        for path, tensor in expected.items():
            torch.testing.assert_close(found[path], tensor, msg=f"{name}{path}")
        for key in ("lr_scheduler", "shuffle_rng"):
            if isinstance(state, dict) and key in state:
                assert str(crashed_states[name][key]) == str(state[key]), (name, key)
    for role in ("policy", "critic"):
        expected, found = (
            master_weights(latest_checkpoint(whole), role),
            master_weights(latest_checkpoint(crashed), role),
        )
        assert expected.keys() == found.keys() and len(expected) > 0, role
        for name, tensor in expected.items():
            torch.testing.assert_close(found[name], tensor, msg=f"{role} {name}")

    # The final weights: equal across the two runs, trained away from the initial model, and the
    # newest checkpoint's policy is final_model.
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    finals = {
        run.name: AutoModelForCausalLM.from_pretrained(run / "final_model").state_dict() for run in (whole, crashed)
    }
    for name in initial:
        torch.testing.assert_close(finals["crashed"][name], finals["whole"][name], msg=name)
    assert not all(torch.equal(finals["whole"][name], initial[name]) for name in initial)
    for run in (whole, crashed):
        checkpointed = AutoModelForCausalLM.from_pretrained(latest_checkpoint(run) / "policy").state_dict()
        assert all(torch.equal(checkpointed[name], finals[run.name][name]) for name in initial), run.name
