"""The flags' checks and derived defaults (the flags themselves are in oat_cpgd.args): each check raises a
ConfigError naming the flags, before anything expensive starts."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from oat_cpgd.algorithms import get_algorithm

if TYPE_CHECKING:
    from oat_cpgd.args import Args, CPGDArgs, PPOArgs

logger = logging.getLogger(__name__)

SYNC_CHECK_TOLERANCE = {"fp32": 1e-3, "bf16": 0.2}
"""--sync_check_tolerance's default per training dtype. The floor it stands above: the mean absolute
difference between vLLM's probe log-probs (`Actor.probe_logprobs`) and the learner's forward
(`Learner.probe_logprobs`) on the same weights, over the first 16 GSM8K training prompts: tiny model
2.4e-6 mean (2.9e-6 max) in fp32, 0.019 (0.023) in bf16; SmolLM2-135M-Instruct with its chat template
9.2e-6 (1.0e-5) in fp32, 0.055 (0.063) in bf16 (vLLM 0.32 on CPU, 2026-12-03). fp32 gets 100 times its
largest floor, as other kernels (CUDA's) are not measured; bf16 3 times, which also clears the 1e-2 to
3e-2 reported for CUDA's bf16 kernels (../shared/docs/GPU_REVIEW.md item 14)."""


class ConfigError(ValueError):
    """Inconsistent flags; the message names them."""


def need(condition: bool, message: str) -> None:
    """Raise a ConfigError (naming the flags) unless `condition` holds."""
    if not condition:
        raise ConfigError(message)


def resolve_oracle_name(name: str) -> str:
    """--oracle checked now (not once vLLM has started), as the name the Ray workers will resolve.

    A name registered with `register_oracle` in this process becomes its class's `module:Class`
    path, since the workers' registries only hold what they import; built-in names are kept.
    `module:Class` imports as in the workers, whose path starts with the launch directory.
    """
    from oat_cpgd.oracles.registry import importable_oracle_name

    return _as_the_workers_import("--oracle", name, importable_oracle_name)


def resolve_environment_name(name: str) -> str:
    """--env checked now, as the name the Ray workers will resolve: as `resolve_oracle_name`."""
    from oat_cpgd.environments import importable_environment_name

    return _as_the_workers_import("--env", name, importable_environment_name)


def resolve_algorithm_name(name: str) -> str:
    """--critic_type checked now, as the name the Ray workers will resolve: as `resolve_oracle_name`."""
    from oat_cpgd.algorithms import importable_algorithm_name

    return _as_the_workers_import("--critic_type", name, importable_algorithm_name)


def _as_the_workers_import(flag: str, name: str, importable: Callable[[str], str]) -> str:
    """`importable(name)` with the launch directory on the path, as the Ray workers have it; errors name `flag`."""
    cwd_added = os.getcwd() not in sys.path
    if cwd_added:
        sys.path.append(os.getcwd())
    try:
        return importable(name)
    except (TypeError, ValueError) as err:  # not the right kind of object; unknown name (the known ones listed)
        raise ConfigError(f"{flag} {name}: {err}.") from None
    except Exception as err:  # the module or object does not import
        raise ConfigError(f"{flag} {name} does not import: {type(err).__name__}: {err}.") from None
    finally:
        if cwd_added:
            sys.path.remove(os.getcwd())


def fill_defaults(args: Args) -> None:
    """The general flags' derived defaults, in place."""
    if args.rnd_seed:
        args.seed = int(time.time() * 1000) % (2**31)
        args.rnd_seed = False  # resolved: a resumed run keeps this seed
    args.tokenizer = args.tokenizer or args.pretrain
    args.ref_pretrain = args.ref_pretrain or args.pretrain
    args.critic_pretrain = args.critic_pretrain or args.pretrain
    args.eval_data = args.eval_data or args.prompt_data
    args.eval_input_key = args.eval_input_key or args.input_key
    args.eval_output_key = args.eval_output_key or args.output_key
    if args.eval_batch_size == -1:
        args.eval_batch_size = args.rollout_batch_size_per_device
    if args.sync_check_tolerance is None:
        args.sync_check_tolerance = SYNC_CHECK_TOLERANCE["bf16" if args.bf16 else "fp32"]
    if args.max_episode_tokens == -1:
        args.max_episode_tokens = args.generate_max_length
    if args.max_model_len is None:
        args.max_model_len = args.prompt_max_length + max(response_max_length(args), args.eval_generate_max_length)
    if args.wb_run_name is None:
        args.wb_run_name = f"{args.run_kind()}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.oracle = resolve_oracle_name(args.oracle)
    if args.env:
        args.env = resolve_environment_name(args.env)


def response_max_length(args: Args) -> int:
    """The longest response: a model turn, or with --env an episode (the model's and the environment's tokens)."""
    return max(args.generate_max_length, args.max_episode_tokens) if args.env else args.generate_max_length


def check_general(args: Args) -> None:
    """The general flags agree (resources, model, data, generation, oracle, evaluation, training, saving)."""
    need(
        not (args.collocate and args.asynchronous),
        "--collocate and --asynchronous cannot be combined: "
        "asynchronous training overlaps generation and learning, which collocated roles cannot.",
    )
    need(args.gpus >= 1, f"--gpus must be >= 1, got {args.gpus}.")
    need(args.learner_threads >= 0, f"--learner_threads must be >= 0 (0: automatic), got {args.learner_threads}.")
    responses = args.rollout_batch_size * args.num_samples
    need(
        responses % args.train_batch_size == 0,
        f"--rollout_batch_size ({args.rollout_batch_size}) x --num_samples ({args.num_samples}) = {responses} "
        f"responses per step must be divisible by --train_batch_size ({args.train_batch_size}).",
    )
    for name in (
        "num_samples",
        "rollout_batch_size",
        "rollout_batch_size_per_device",
        "train_batch_size",
        "train_batch_size_per_device",
        "sync_params_every",
        "num_prompt_epoch",
        "eval_n",
        "generate_max_length",
        "prompt_max_length",
    ):
        need(getattr(args, name) >= 1, f"--{name} must be >= 1, got {getattr(args, name)}.")
    for name in (
        "eval_batch_size",
        "eval_generate_max_length",
        "max_train",
        "max_eval",
        "max_save_num",
        "vllm_tensor_parallel_size",
        "vllm_cpu_kvcache_gb",
    ):
        value = getattr(args, name)
        default = " (its default -1 means --rollout_batch_size_per_device)" if name == "eval_batch_size" else ""
        need(value >= 1, f"--{name} must be >= 1{default}, got {value}.")
    for name in ("eval_steps", "save_steps", "max_steps", "num_actors"):
        value = getattr(args, name)
        need(value == -1 or value >= 1, f"--{name} must be >= 1, or -1 for its default, got {value}.")
    response = max(response_max_length(args), args.eval_generate_max_length)
    longest = args.prompt_max_length + response
    need(
        args.max_model_len >= longest,
        f"--max_model_len ({args.max_model_len}) is shorter than --prompt_max_length ({args.prompt_max_length}) "
        f"+ max(--generate_max_length{', --max_episode_tokens' if args.env else ''}, --eval_generate_max_length) "
        f"({response}) = {longest} tokens.",
    )
    check_environment(args)
    need(
        args.vllm_gpu_ratio is None or 0 < args.vllm_gpu_ratio <= 1,
        f"--vllm_gpu_ratio is a share of GPU memory and must be in (0, 1], got {args.vllm_gpu_ratio}.",
    )
    need(args.learning_rate > 0, f"--learning_rate must be > 0, got {args.learning_rate}.")
    need(0 <= args.lr_warmup_ratio <= 1, f"--lr_warmup_ratio must be in [0, 1], got {args.lr_warmup_ratio}.")
    need(
        args.max_step_adjustment is None or args.max_step_adjustment > 0,
        f"--max_step_adjustment must be > 0 (unset: the schedule ends with the run), got {args.max_step_adjustment}.",
    )
    need(args.max_norm >= 0, f"--max_norm must be >= 0 (0: no gradient clipping), got {args.max_norm}.")
    need(
        0 <= args.adam_beta_1 < 1 and 0 <= args.adam_beta_2 < 1,
        f"--adam_beta_1 and --adam_beta_2 must be in [0, 1), got {args.adam_beta_1}, {args.adam_beta_2}.",
    )
    need(args.l2 >= 0, f"--l2 (weight decay) must be >= 0, got {args.l2}.")
    need(args.beta >= 0, f"--beta (reference-KL loss coefficient) must be >= 0, got {args.beta}.")
    need(args.oracle_timeout > 0, f"--oracle_timeout must be > 0 seconds, got {args.oracle_timeout}.")
    need(args.oracle_workers >= 0, f"--oracle_workers must be >= 0 (0: checks inline), got {args.oracle_workers}.")
    need(args.log_samples >= 0, f"--log_samples must be >= 0, got {args.log_samples}.")
    for name in ("max_actor_restarts", "max_learner_restarts", "max_skipped_steps", "sync_check_every",
                 "weight_digest_every"):  # fmt: skip
        need(getattr(args, name) >= 0, f"--{name} must be >= 0, got {getattr(args, name)}.")
    need(args.role_timeout > 0, f"--role_timeout must be > 0 seconds, got {args.role_timeout}.")
    need(args.sync_check_tolerance > 0, f"--sync_check_tolerance must be > 0, got {args.sync_check_tolerance}.")
    need(args.eval_temperature >= 0, f"--eval_temperature must be >= 0 (0: greedy), got {args.eval_temperature}.")
    need(args.top_k == -1 or args.top_k >= 1, f"--top_k must be >= 1, or -1 for no top-k, got {args.top_k}.")
    need(0 < args.top_p <= 1 and 0 < args.eval_top_p <= 1, "--top_p and --eval_top_p must be in (0, 1].")
    need(
        args.temperature > 0,
        "--temperature must be > 0 for training rollouts (use --eval_temperature 0 for greedy eval).",
    )
    need(args.param_offload is False or args.zero_stage == 3, "--param_offload needs --zero-stage 3.")
    need(
        not args.flash_attn or args.bf16,
        "--flash_attn needs --bf16: the flash-attention kernel runs in bf16/fp16 only and rejects the fp32 "
        "weights of a run without --bf16 at the first forward.",
    )
    need(
        not (args.bf16 and args.zero_stage == 0),
        "--bf16 needs --zero_stage 1 or higher: without ZeRO, DeepSpeed cannot accumulate bf16 gradients in "
        "fp32 (it raises 'unsupported mix of bf16 and fp32 gradient accumulation' at start-up).",
    )
    need(args.lora_rank >= 0, f"--lora_rank must be >= 0 (0: no LoRA), got {args.lora_rank}.")
    need(args.lora_alpha > 0, f"--lora_alpha must be > 0, got {args.lora_alpha}.")
    need(0 <= args.lora_dropout < 1, f"--lora_dropout must be in [0, 1), got {args.lora_dropout}.")
    need(
        len(args.target_modules) == 1 or (args.target_modules and "all-linear" not in args.target_modules),
        f"--target_modules takes all-linear alone or module names, got {' '.join(args.target_modules) or 'none'}.",
    )


def check_environment(args: Args) -> None:
    """The multi-turn flags (--env and its limits) agree; the `python` tool needs a working sandbox."""
    need(args.max_turns >= 1, f"--max_turns must be >= 1, got {args.max_turns}.")
    need(
        args.max_episode_tokens >= 1,
        f"--max_episode_tokens must be >= 1, or -1 for --generate_max_length, got {args.max_episode_tokens}.",
    )
    if not args.env:
        return
    need(
        0 < args.tool_timeout < args.oracle_timeout,
        f"--tool_timeout ({args.tool_timeout}) must be > 0 and under --oracle_timeout ({args.oracle_timeout}), "
        "which bounds each environment call: a tool call that may use it all would be cut as a hung environment.",
    )
    from oat_cpgd.environments import PythonTool, environment_class
    from oat_cpgd.tools import SandboxUnavailable, check_sandbox

    if issubclass(environment_class(args.env), PythonTool):
        try:
            check_sandbox()
        except SandboxUnavailable as err:
            raise ConfigError(
                f"--env {args.env} runs the model's code in the sandbox, which cannot run here: {err}."
            ) from None


def fill_algorithm_defaults(args: PPOArgs) -> None:
    """The algorithm's defaults, in place: --loss_agg_mode, --clip_low, --clip_high."""
    args.critic_type = resolve_algorithm_name(args.critic_type)
    algorithm = get_algorithm(args.critic_type)
    args.loss_agg_mode = args.loss_agg_mode or algorithm.agg_mode
    args.clip_low = algorithm.clip[0] if args.clip_low is None else args.clip_low
    args.clip_high = algorithm.clip[1] if args.clip_high is None else args.clip_high
    if args.non_stop_penalty > 0:
        logger.warning(
            "--non_stop_penalty %s is positive: it rewards responses truncated at --generate_max_length "
            "(a penalty is <= 0, e.g. -1).",
            args.non_stop_penalty,
        )


def check_sentinel(args: PPOArgs) -> None:
    from oat_cpgd.sentinel import MIN_HISTORY

    need(
        args.sentinel_keep >= 1,
        f"--sentinel_keep must be >= 1 (steps between rollback points), got {args.sentinel_keep}.",
    )
    need(args.sentinel_k > 0, f"--sentinel_k must be > 0, got {args.sentinel_k}.")
    need(
        args.sentinel_max_drift >= 0, f"--sentinel_max_drift must be >= 0 (0: no bound), got {args.sentinel_max_drift}."
    )
    need(
        args.sentinel_window >= MIN_HISTORY,
        f"--sentinel_window must be >= {MIN_HISTORY} (the steps a signal needs before it may fire), "
        f"got {args.sentinel_window}.",
    )
    need(0 < args.sentinel_lr_factor <= 1, f"--sentinel_lr_factor must be in (0, 1], got {args.sentinel_lr_factor}.")
    need(args.max_rollbacks >= 0, f"--max_rollbacks must be >= 0, got {args.max_rollbacks}.")
    need(
        not (args.sentinel and args.asynchronous),
        "--sentinel and --asynchronous cannot be combined yet: a rollback would have to discard the next step's "
        "rollout, which asynchronous training samples while the alarming step learns.",
    )


def check_training(args: PPOArgs) -> None:
    """The algorithm, rewards, advantages and critic flags agree."""
    check_sentinel(args)
    algorithm = get_algorithm(args.critic_type)
    try:
        algorithm.loss_options(args)
        algorithm.advantage_options(args)
    except AttributeError as err:
        raise ConfigError(
            f"--critic_type {args.critic_type} needs the flag --{err.name}, which {type(args).__name__} "
            "lacks: run `python -m oat_cpgd.experiment.run_cpgd`."
        ) from None
    need(
        algorithm.needs_critic or args.num_samples >= 2,
        f"--critic_type {args.critic_type} compares responses within a group: "
        f"--num_samples must be >= 2, got {args.num_samples}.",
    )
    need(
        not (args.dynamic_sampling and algorithm.needs_critic),
        f"--dynamic_sampling drops groups whose rewards are all equal, which only group methods skip; "
        f"--critic_type {args.critic_type} learns from them through its critic.",
    )
    need(args.mini_train_batch_size_per_device >= 1, "--mini_train_batch_size_per_device must be >= 1.")
    longest = args.prompt_max_length + response_max_length(args)
    need(
        not args.packing or args.train_max_tokens_per_device >= longest,
        f"--train_max_tokens_per_device ({args.train_max_tokens_per_device}) must hold the longest response, "
        f"--prompt_max_length + --generate_max_length{' (or --max_episode_tokens)' if args.env else ''} = "
        f"{longest} tokens, with --packing.",
    )
    need(
        args.logprob_chunk_tokens >= 0,
        f"--logprob_chunk_tokens must be >= 0 (0: no chunks), got {args.logprob_chunk_tokens}.",
    )
    need(
        0 <= args.clip_low <= 1 and args.clip_high >= 0,
        f"--clip_low must be in [0, 1] (1: no lower bound) and --clip_high >= 0, got {args.clip_low}, "
        f"{args.clip_high}.",
    )
    need(args.tis_c > 0, f"--tis_c must be > 0, got {args.tis_c}.")
    need(
        0 <= args.overlong_buffer_len <= args.generate_max_length,
        f"--overlong_buffer_len ({args.overlong_buffer_len}) must be in [0, --generate_max_length "
        f"({args.generate_max_length})].",
    )
    need(
        args.dynamic_sampling_max_draws >= 0,
        f"--dynamic_sampling_max_draws must be >= 0, got {args.dynamic_sampling_max_draws}.",
    )
    need(args.num_ppo_epochs >= 1, f"--num_ppo_epochs must be >= 1, got {args.num_ppo_epochs}.")
    need(args.critic_learning_rate > 0, f"--critic_learning_rate must be > 0, got {args.critic_learning_rate}.")
    need(
        args.critic_max_step_adjustment is None or args.critic_max_step_adjustment > 0,
        f"--critic_max_step_adjustment must be > 0, got {args.critic_max_step_adjustment}.",
    )
    need(
        args.kl_penalty_coef >= 0,
        f"--kl_penalty_coef (reference-KL reward shaping) must be >= 0, got {args.kl_penalty_coef}.",
    )
    need(
        args.reward_scale > 0,
        f"--reward_scale must be > 0 (a negative one rewards failure), got {args.reward_scale}.",
    )
    need(
        0 <= args.gamma <= 1 and 0 <= args.lam <= 1,
        f"--gamma and --lam must be in [0, 1], got {args.gamma}, {args.lam}.",
    )
    need(args.vf_coef >= 0, f"--vf_coef must be >= 0, got {args.vf_coef}.")
    need(args.cliprange_value > 0, f"--cliprange_value must be > 0, got {args.cliprange_value}.")
    need(
        args.overlong_penalty_factor >= 0,
        f"--overlong_penalty_factor must be >= 0 (it is subtracted), got {args.overlong_penalty_factor}.",
    )
    need(
        args.dual_clip is None or args.dual_clip > 1,
        f"--dual_clip must be > 1 (it bounds the loss at dual_clip x the advantage), got {args.dual_clip}.",
    )


def check_cpgd(args: CPGDArgs) -> None:
    need(args.policy_drift_coeff >= 0, f"--policy_drift_coeff must be >= 0, got {args.policy_drift_coeff}.")
    need(args.drift_clip > 0, f"--drift_clip must be > 0, got {args.drift_clip}.")
    need(args.clip_filter_max_weight > 0, f"--clip_filter_max_weight must be > 0, got {args.clip_filter_max_weight}.")
