"""The CLI: oat's documented commands parse verbatim; bad combinations name their flags."""

import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import oat_cpgd.args
from oat_cpgd.args import SECTIONS, SYNC_CHECK_TOLERANCE, ConfigError, CPGDArgs, PPOArgs
from oat_cpgd.cli import field_help, help_sections, parse_args
from oat_cpgd.oracles import ORACLES, RewardOracle, register_oracle

REPO = Path(__file__).resolve().parents[1]

# oat's docs/reasoning_examples.md, first command (PPO on GSM8K), module name changed only.
OAT_PPO_GSM8K = """
    --gpus 8 --collocate --gradient-checkpointing --flash-attn --bf16 --rnd-seed --learning_rate 0.000001
    --critic_learning_rate 0.000001 --lr_scheduler polynomial --kl_penalty_coef 0 --num_ppo_epochs 2
    --beta 0.0001 --non_stop_penalty 0 --oracle_type reward --oracle gsm8k --pretrain lkevinzc/rho-1b-sft-GSM8K
    --apply-chat-template --zero-stage 2 --prompt_data lkevinzc/gsm8k --max-train 9999999 --num_prompt_epoch 6
    --prompt_max_length 1000 --sync_params_every 1 --num_samples 8 --max_step_adjustment 16
    --critic_max_step_adjustment 16 --temperature 1.2 --top_p 0.9 --generate_max_length 1024 --save_steps -1
    --input_key question --output_key final_answer --train_split train --train_batch_size 64
    --train_batch_size_per_device 8 --mini_train_batch_size_per_device 8 --rollout_batch_size 64
    --rollout_batch_size_per_device 8 --pi_buffer_maxlen_per_device 64 --max_eval 1500 --eval_batch_size 200
    --eval_generate_max_length 1024 --eval_steps 50 --eval_temperature 0.35 --eval_top_p 0.9 --eval_n 16
    --eval_input_key question --eval_output_key final_answer --use-wb --wb-run-name rho-1b-ppo-gsm8k
""".split()

# oat's docs, second command (R1-zero GRPO on CountDown via examples/r1_zero_math.py).
OAT_R1_ZERO_COUNTDOWN = """
    --critic_type grpo --gpus 8 --vllm_gpu_ratio 0.7 --gradient-checkpointing --flash-attn --bf16 --rnd-seed
    --learning_rate 0.000001 --lr_warmup_ratio 0.0000001 --kl_penalty_coef 0 --num_ppo_epochs 1 --beta 0.001
    --non_stop_penalty 0 --oracle_type reward --oracle countdown --pretrain Qwen/Qwen2.5-3B --zero-stage 2
    --ref_offload --prompt_data lkevinzc/CountDownZero --train_split train --input_key input --output_key gt_answer
    --max-train 9999999 --num_prompt_epoch 1 --prompt_max_length 256 --sync_params_every 1 --num_samples 8
    --max_step_adjustment 8 --critic_max_step_adjustment 8 --temperature 1.0 --top_p 0.9 --generate_max_length 1024
    --save_steps -1 --train_batch_size 128 --train_batch_size_per_device 2 --mini_train_batch_size_per_device 2
    --rollout_batch_size 128 --rollout_batch_size_per_device 32 --pi_buffer_maxlen_per_device 256
    --eval_batch_size 200 --eval_steps 8 --eval_temperature 0 --eval_generate_max_length 1024 --eval_split test
    --use-wb --wb-run-name qwen-2.5-3b-countdown-grpo
""".split()

CPGD_COMMAND = """
    --gpus 2 --pretrain Qwen/Qwen2.5-7B --oracle math --prompt_data ../shared/data/deepscaler
    --policy_drift_coeff 0.02 --cpgd_weight clip_filter --clip_low 0.2 --clip_high 0.28
    --loss_agg_mode seq-mean-token-sum-norm --num_samples 8 --rollout_batch_size 64 --train_batch_size 128
""".split()


def dry_run(module: str, argv: list[str]) -> dict:
    """Run an entry point as a user would, with --dry_run; return the printed configuration."""
    done = subprocess.run([sys.executable, *module.split(), *argv, "--dry_run"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_oat_ppo_doc_command_parses():
    config = dry_run("-m oat_cpgd.experiment.run_ppo", OAT_PPO_GSM8K)
    assert config["critic_type"] == "ppo"
    assert config["collocate"] and config["gradient_checkpointing"] and config["flash_attn"] and config["bf16"]
    assert config["learning_rate"] == 1e-6 and config["beta"] == 1e-4 and config["temperature"] == 1.2
    assert config["input_key"] == "question" and config["eval_output_key"] == "final_answer"
    assert config["use_wb"] and config["wb_run_name"] == "rho-1b-ppo-gsm8k"
    assert config["max_train"] == 9999999 and config["eval_n"] == 16 and config["zero_stage"] == 2
    assert config["rnd_seed"] is False and config["seed"] != 42  # --rnd-seed resolved into a seed


@pytest.mark.slow
def test_oat_r1_zero_doc_command_parses():
    config = dry_run("examples/r1_zero_math.py", OAT_R1_ZERO_COUNTDOWN)
    assert config["critic_type"] == "grpo" and config["oracle"] == "countdown"
    assert config["ref_offload"] and config["vllm_gpu_ratio"] == 0.7 and config["eval_split"] == "test"
    # The algorithm's defaults, resolved into the configuration, and oat's schedule defaults.
    assert config["loss_agg_mode"] == "seq-mean-token-mean" and config["clip_low"] == config["clip_high"] == 0.2
    assert config["lr_scheduler"] == "cosine_with_min_lr" and config["is_correction"] == "tis"
    assert config["tis_c"] == 2.0


@pytest.mark.slow
def test_cpgd_command_parses_with_cpgd_defaults():
    config = dry_run("-m oat_cpgd.experiment.run_cpgd", CPGD_COMMAND)
    assert config["critic_type"] == "cpgd" and config["cpgd_weight"] == "clip_filter"
    assert config["policy_drift_coeff"] == 0.02 and config["clip_high"] == 0.28
    assert config["loss_agg_mode"] == "seq-mean-token-sum-norm"
    defaults = dry_run("-m oat_cpgd.experiment.run_cpgd", [])
    assert defaults["critic_type"] == "cpgd" and defaults["cpgd_weight"] == "std"
    assert defaults["policy_drift_coeff"] == 0.01


@pytest.mark.slow
def test_grpo_entry_point_defaults_to_grpo():
    assert dry_run("-m oat_cpgd.experiment.run_grpo", [])["critic_type"] == "grpo"


@pytest.mark.parametrize(
    "argv, flags",
    [
        (["--collocate", "--asynchronous"], ["--collocate", "--asynchronous"]),
        (
            ["--gpus", "4", "--train_batch_size", "8", "--train_batch_size_per_device", "4"],
            ["--train_batch_size", "--train_batch_size_per_device", "--gpus"],
        ),
        (
            ["--rollout_batch_size", "3", "--num_samples", "3", "--train_batch_size", "2"],
            ["--rollout_batch_size", "--num_samples", "--train_batch_size"],
        ),
        (
            ["--critic_type", "grpo", "--num_samples", "1", "--train_batch_size", "1", "--rollout_batch_size", "1"],
            ["--num_samples"],
        ),
        (["--param_offload", "--zero-stage", "2"], ["--param_offload"]),
        (["--lora_rank", "8", "--target_modules", "all-linear", "q_proj"], ["--target_modules", "all-linear"]),
        (["--flash_attn"], ["--flash_attn", "--bf16"]),
        (["--flash_attn", "--no-bf16"], ["--flash_attn", "--bf16"]),
        (["--zero_stage", "0", "--bf16"], ["--zero_stage", "--bf16"]),
    ],
)
def test_bad_combinations_name_their_flags(argv, flags, capsys):
    assert_usage_error(argv, flags, capsys)


def assert_usage_error(argv: list[str], flags: list[str], capsys) -> None:
    """Parsing `argv` is a usage error (exit 2) whose message names every one of `flags`."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(PPOArgs, argv=argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    for flag in flags:
        assert flag in message, message


@pytest.mark.parametrize(
    "argv, flags",
    [
        (["--eval_batch_size", "0"], ["--eval_batch_size"]),
        (["--max_model_len", "8"], ["--max_model_len", "--prompt_max_length", "--generate_max_length"]),
        (["--learning_rate", "-1"], ["--learning_rate"]),
        (["--learning_rate", "0"], ["--learning_rate"]),
        (["--critic_learning_rate", "-1"], ["--critic_learning_rate"]),
        (["--beta", "-1"], ["--beta"]),
        (["--kl_penalty_coef", "-1"], ["--kl_penalty_coef"]),
        (["--vllm_gpu_ratio", "7"], ["--vllm_gpu_ratio"]),
        (["--vllm_gpu_ratio", "0"], ["--vllm_gpu_ratio"]),
        (["--max_norm", "-1"], ["--max_norm"]),
        (["--eval_steps", "0"], ["--eval_steps"]),
        (["--save_steps", "0"], ["--save_steps"]),
        (["--oracle_timeout", "0"], ["--oracle_timeout"]),
        (["--oracle_workers", "-1"], ["--oracle_workers"]),
        (["--num_ppo_epochs", "0"], ["--num_ppo_epochs"]),
        (["--eval_temperature", "-0.5"], ["--eval_temperature"]),
        (["--top_k", "0"], ["--top_k"]),
        (["--lr_warmup_ratio", "1.5"], ["--lr_warmup_ratio"]),
        (["--reward_scale", "-1"], ["--reward_scale"]),
        (["--gamma", "1.5"], ["--gamma"]),
        (["--dual_clip", "0.5"], ["--dual_clip"]),
        (["--max_skipped_steps", "-1"], ["--max_skipped_steps"]),
        (["--max_actor_restarts", "-1"], ["--max_actor_restarts"]),
        (["--sync_check_every", "-1"], ["--sync_check_every"]),
        (["--sync_check_tolerance", "0"], ["--sync_check_tolerance"]),
        (["--tis_c", "0"], ["--tis_c"]),
        (["--lora_rank", "-1"], ["--lora_rank"]),
        (["--lora_alpha", "0"], ["--lora_alpha"]),
        (["--lora_dropout", "1"], ["--lora_dropout"]),
        (["--overlong_buffer_len", "2000"], ["--overlong_buffer_len", "--generate_max_length"]),
        (["--critic_type", "ppo", "--dynamic_sampling"], ["--dynamic_sampling", "--critic_type"]),
        (["--oracle", "gsm9k"], ["--oracle", "gsm9k", "countdown", "deepscaler", "gsm8k", "math"]),
        (["--oracle", "pathlib:Path"], ["--oracle", "RewardOracle"]),
        (["--oracle", "no_such_module:Oracle"], ["--oracle", "no_such_module"]),
        (["--oracle", "oat_cpgd.oracles.gsm8k:NoSuchOracle"], ["--oracle", "NoSuchOracle"]),
        (["--env", "chess"], ["--env", "chess", "oracle", "python"]),
        (["--env", "pathlib:Path"], ["--env", "Environment"]),
        (["--env", "no_such_module:Env"], ["--env", "no_such_module"]),
        (["--env", "python", "--max_turns", "0"], ["--max_turns"]),
        (["--env", "python", "--max_episode_tokens", "0"], ["--max_episode_tokens"]),
        (["--env", "python", "--tool_timeout", "2"], ["--tool_timeout", "--oracle_timeout"]),
        (["--sentinel_keep", "0"], ["--sentinel_keep"]),
        (["--sentinel_max_drift", "-1"], ["--sentinel_max_drift"]),
        (["--sentinel_window", "3"], ["--sentinel_window", "5"]),
        (["--sentinel_lr_factor", "2"], ["--sentinel_lr_factor"]),
        (["--sentinel", "--asynchronous"], ["--sentinel", "--asynchronous"]),
    ],
)
def test_out_of_range_flags_name_their_flags(argv, flags, capsys):
    """Caught at parse time (--dry_run included), before any engine starts."""
    assert_usage_error([*argv, "--dry_run"], flags, capsys)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--policy_drift_coeff", "-0.1"], "--policy_drift_coeff"),
        (["--drift_clip", "0"], "--drift_clip"),
        (["--clip_filter_max_weight", "0"], "--clip_filter_max_weight"),
    ],
)
def test_out_of_range_cpgd_flags_name_their_flags(argv, flag, capsys):
    with pytest.raises(SystemExit):
        parse_args(CPGDArgs, argv=argv)
    assert flag in capsys.readouterr().err


def test_limits_themselves_are_accepted():
    args = parse_args(
        PPOArgs,
        argv="--max_model_len 2048 --vllm_gpu_ratio 1 --beta 0 --max_norm 0 --eval_steps -1 --oracle_workers 0 "
        "--eval_batch_size 1 --top_k 1 --non_stop_penalty -1".split(),
    )
    assert args.max_model_len == 2048 and args.eval_batch_size == 1
    assert parse_args(PPOArgs, argv=[]).max_model_len == 2048  # the default: 1024 + max(1024, 1024)


@pytest.mark.parametrize(
    "argv", [["--flash_attn", "--bf16"], ["--zero_stage", "0"], ["--zero_stage", "1", "--bf16"], ["--no-flash-attn"]]
)
def test_neighbours_of_the_refused_dtype_combinations_parse(argv):
    parse_args(PPOArgs, argv=argv)


def test_sync_check_tolerance_follows_the_dtype_unless_given():
    assert parse_args(PPOArgs, argv=[]).sync_check_tolerance == SYNC_CHECK_TOLERANCE["fp32"] == 1e-3
    assert parse_args(PPOArgs, argv=["--bf16"]).sync_check_tolerance == SYNC_CHECK_TOLERANCE["bf16"] == 0.2
    for dtype in (["--bf16"], ["--no-bf16"]):
        assert parse_args(PPOArgs, argv=[*dtype, "--sync_check_tolerance", "0.07"]).sync_check_tolerance == 0.07


def test_lora_flags_parse():
    assert parse_args(PPOArgs, argv=[]).lora_rank == 0  # off by default
    args = parse_args(PPOArgs, argv="--lora_rank 8 --lora_alpha 32 --target_modules q_proj v_proj".split())
    assert (args.lora_rank, args.lora_alpha, args.target_modules) == (8, 32, ("q_proj", "v_proj"))


def test_a_positive_non_stop_penalty_is_warned_about(caplog):
    with caplog.at_level("WARNING", logger="oat_cpgd.args"):
        parse_args(PPOArgs, argv=["--non_stop_penalty", "-1"])
        parse_args(PPOArgs, argv=["--non_stop_penalty", "0"])
        assert not caplog.records
        parse_args(PPOArgs, argv=["--non_stop_penalty", "0.5"])
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "--non_stop_penalty" in record.getMessage()


class RegisteredOracle(RewardOracle):
    """Registered under a short name by the test below only (at module level: importable by workers)."""

    def reward(self, prompt, response, reference):
        return 1.0


@pytest.mark.slow
def test_registered_oracle_names_reach_the_ray_workers(tmp_path):
    """The registry is per process: a registered short name becomes the class's import path, which a
    fresh process (a Ray worker: the repo root and PYTHONPATH on its path) resolves to the same class."""
    register_oracle("registered_in_the_driver")(RegisteredOracle)
    try:
        args = parse_args(PPOArgs, argv=["--oracle", "registered_in_the_driver"])
    finally:
        del ORACLES["registered_in_the_driver"]
    assert args.oracle == f"{__name__}:RegisteredOracle"
    worker = "import sys; from oat_cpgd.oracles import oracle_class; print(oracle_class(sys.argv[1]).__qualname__)"
    tests_dir = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), tests_dir])}
    done = subprocess.run(
        [sys.executable, "-c", worker, args.oracle], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0 and done.stdout.strip() == "RegisteredOracle", done.stderr
    # Built-in names stay as they are: every worker's registry has them.
    for name in ("gsm8k", "countdown", "math", "deepscaler", "examples.my_oracle:IntegerAnswerOracle"):
        assert parse_args(PPOArgs, argv=["--oracle", name]).oracle == name


def test_an_oracle_registered_where_workers_cannot_import_it_is_an_error():
    class LocalOracle(RewardOracle):
        def reward(self, prompt, response, reference):
            return 0.0

    register_oracle("local_only")(LocalOracle)
    try:
        with pytest.raises(ConfigError, match="--oracle local_only.*importable module"):
            PPOArgs(oracle="local_only").resolve()
    finally:
        del ORACLES["local_only"]


def test_cpgd_critic_type_needs_the_cpgd_entry_point(capsys):
    with pytest.raises(SystemExit):
        parse_args(PPOArgs, argv=["--critic_type", "cpgd"])
    assert "run_cpgd" in capsys.readouterr().err
    args = parse_args(CPGDArgs, argv=["--critic_type", "grpo"])  # a CPGD run may switch algorithm
    assert args.critic_type == "grpo" and args.agg_mode == "seq-mean-token-mean"


@pytest.mark.slow
def test_help_explains_every_flag():
    done = subprocess.run(
        [sys.executable, "-m", "oat_cpgd.experiment.run_cpgd", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", **__import__("os").environ},
    )
    assert done.returncode == 0
    for flag in ("--policy-drift-coeff", "--cpgd-weight", "--collocate", "--prompt-data", "--gpus"):
        assert flag in done.stdout
    assert "learner ranks" in done.stdout  # what --gpus means without GPUs


ENTRY_POINTS = {
    "oat_cpgd.experiment.run_ppo": PPOArgs(),
    "oat_cpgd.experiment.run_grpo": PPOArgs(critic_type="grpo"),
    "oat_cpgd.experiment.run_cpgd": CPGDArgs(),
}
"""Each entry point's arguments, as its `parse_args(type(default), default=default)` call builds them."""


@functools.cache
def help_entries(module: str) -> dict[str, tuple[str, str]]:
    """An entry point's `--help` as {flag: (its section's heading, its help text)}, read from tyro's boxes.

    At 80 columns tyro stacks the boxes in one column: a box opens with `╭─ <heading> ─`, a flag's line
    starts `│ --flag`, and its help follows the invocation after two spaces or on indented lines below.
    """
    default = ENTRY_POINTS[module]
    shown = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # tyro draws its boxes on a UTF-8 stream only
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as done:
        patch.setenv("COLUMNS", "80")
        parse_args(type(default), default=default, argv=["--help"])
    assert done.value.code == 0
    entries: dict[str, tuple[str, str]] = {}
    heading = flag = None
    shown.seek(0)
    for line in shown.read().splitlines():
        if opened := re.match(r"╭─ (.+?) ─", line):
            heading, flag = opened[1], None
        elif started := re.match(r"│ (--[a-z0-9-]+)", line):
            flag = started[1]
            assert flag not in entries, f"{flag} shown twice"
            entries[flag] = (heading, line.strip("│ ").partition("  ")[2].strip())
        elif flag is not None and line.startswith("│  "):  # an indented line: help (not a wrapped invocation)
            entries[flag] = (heading, f"{entries[flag][1]} {line.strip('│ ')}")
    return entries


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_flag_has_help_text(module):
    entries = help_entries(module)
    for field in dataclasses.fields(ENTRY_POINTS[module]):
        flag = "--" + field.name.replace("_", "-")
        assert flag in entries, f"{flag} missing from --help"
        explanation = entries[flag][1].split("(default:")[0].strip()
        assert explanation, f"{flag} has no help text in --help"


# Each section's first and last flags (when these tests were written), and the algorithms' sections.
SECTION_OF_FLAG = {
    "--gpus": "resources",
    "--enable-prefix-caching": "resources",
    "--pretrain": "model",
    "--gradient-checkpointing": "model",
    "--prompt-data": "data",
    "--num-prompt-epoch": "data",
    "--num-samples": "generation",
    "--stop": "generation",
    "--oracle": "oracle",
    "--format-reward": "oracle",
    "--eval-data": "evaluation",
    "--eval-n": "evaluation",
    "--learning-rate": "training",
    "--max-steps": "training",
    "--save-path": "saving-and-logging",
    "--use-tb": "saving-and-logging",
    "--dry-run": "saving-and-logging",
    "--critic-type": "algorithm",
    "--tis-c": "algorithm",
    "--kl-penalty-coef": "rewards-and-advantages",
    "--whiten-adv": "rewards-and-advantages",
    "--gamma": "critic",
    "--critic-max-step-adjustment": "critic",
}
CPGD_SECTION_OF_FLAG = {"--policy-drift-coeff": "cpgd", "--clip-filter-max-weight": "cpgd"}


@pytest.mark.parametrize("module", ["oat_cpgd.experiment.run_ppo", "oat_cpgd.experiment.run_cpgd"])
def test_help_groups_the_flags_by_section(module):
    entries = help_entries(module)
    expected = {**SECTION_OF_FLAG, **(CPGD_SECTION_OF_FLAG if module.endswith("cpgd") else {})}
    for flag, section in expected.items():
        assert entries[flag][0] == f"{section} options", (flag, entries[flag][0])
    headings = list(dict.fromkeys(heading for heading, _ in entries.values()))
    sections = [name.replace("_", "-") for name in SECTIONS if module.endswith("cpgd") or name != "cpgd"]
    assert headings == [f"{name} options" for name in sections]


def test_sectioned_help_keeps_flat_flags_and_the_given_defaults():
    args = parse_args(
        CPGDArgs,
        default=CPGDArgs(prompt_template="r1_zero", stop=("</answer>",)),
        argv=["--learning_rate", "2e-6", "--gamma", "0.9", "--policy-drift-coeff", "0.05", "--no-bf16"],
    )
    assert type(args) is CPGDArgs
    assert args.learning_rate == 2e-6 and args.gamma == 0.9 and args.policy_drift_coeff == 0.05
    assert args.prompt_template == "r1_zero" and args.stop == ("</answer>",)  # from `default`, not the class's
    assert args.critic_type == "cpgd" and args.temperature == 1.0 and not args.bf16


def test_every_flag_names_its_help_section():
    # The section is each field's own (flag(section, ...)), not the first field's of a run of fields:
    # a field without one is refused, so a new flag cannot land in its neighbour's section unseen.
    sections = help_sections(CPGDArgs)
    assert sorted(name for names in sections.values() for name in names) == sorted(
        field.name for field in dataclasses.fields(CPGDArgs)
    )
    assert sections["oracle"][0] == "oracle" and "critic_type" in sections["algorithm"]

    @dataclasses.dataclass
    class Unsectioned(PPOArgs):
        extra: int = 0

    with pytest.raises(TypeError, match="Unsectioned.extra names no --help section"):
        help_sections(Unsectioned)
    with pytest.raises(ValueError, match="unknown --help section 'misc'"):
        oat_cpgd.args.flag("misc", 0)


def test_help_lists_come_from_the_registries(monkeypatch):
    from oat_cpgd.algorithms import ALGORITHMS
    from oat_cpgd.oracles import ORACLES

    entries = help_entries("oat_cpgd.experiment.run_ppo")
    critic_help, oracle_help = entries["--critic-type"][1], entries["--oracle"][1]
    assert all(name in critic_help for name in ALGORITHMS) and "{algorithms}" not in critic_help
    assert all(name in oracle_help for name in ORACLES) and "{oracles}" not in oracle_help
    # A name added to a registry shows up in the help without editing any docstring.
    monkeypatch.setitem(ALGORITHMS, "a_new_algorithm", ALGORITHMS["grpo"])
    assert "a_new_algorithm" in field_help(PPOArgs)["critic_type"]


@pytest.mark.parametrize(
    "oat_flags",
    [
        ["--oracle_type", "reward", "--pi_buffer_maxlen_per_device", "64"],
        ["--oracle-type=reward", "--pi-buffer-maxlen-per-device=-1"],
    ],
)
def test_oats_flags_that_mean_nothing_here_are_accepted_and_named(oat_flags, capsys):
    args = parse_args(PPOArgs, argv=[*oat_flags, "--num_samples", "4"])
    assert (
        args.num_samples == 4 and not hasattr(args, "oracle_type") and not hasattr(args, "pi_buffer_maxlen_per_device")
    )
    err = capsys.readouterr().err
    assert "--oracle_type ignored" in err and "--pi_buffer_maxlen_per_device ignored" in err
