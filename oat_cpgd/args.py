"""Command-line arguments, layered like oat's: general -> PPO family -> CPGD.

Every field is a flag (parsed by oat_cpgd.cli); both spellings work (`--learning_rate` and
`--learning-rate`). The attribute docstrings below are what `--help` shows, grouped by
oat_cpgd.cli.HELP_SECTIONS.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from oat_cpgd.algorithms import AGG_MODES, CPGD_WEIGHTS, IS_CORRECTIONS, get_algorithm

AggMode = Literal[AGG_MODES]
ISCorrection = Literal[IS_CORRECTIONS]


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


@dataclass
class Args:
    """General arguments: resources, model, data, generation, oracle, training, logging."""

    # --- Resources ---
    gpus: int = 1
    """Devices. With CUDA: GPUs, split between actors and learners (or all shared with
    --collocate). Without GPUs: the number of learner ranks (processes); the actors take
    their share of the CPU cores."""
    num_actors: int = -1
    """vLLM actor engines. -1: one per GPU with --collocate, half the GPUs otherwise; one on CPU."""
    max_actor_restarts: int = 3
    """Times Ray restarts an actor whose process died (OOM, segfault, killed); its lost prompts are
    resent after it rejoins the weight transfer and gets the current weights (misc/actor_restarts)."""
    collocate: bool = False
    """Actors and learners share the same devices; on CUDA the vLLM engine sleeps while the learner trains."""
    asynchronous: bool = False
    """Overlap the next rollout with learning (one step off-policy). Not with --collocate."""
    ray_address: str | None = None
    """Attach to an existing Ray cluster (e.g. `auto` or `127.0.0.1:6379`); default: start a local one."""
    actor_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    """Custom Ray resources each actor asks for, as NAME AMOUNT pairs (e.g. `--actor_resources actor_node 1`
    with `ray start --resources '{"actor_node": 8}'` on the nodes meant for generation)."""
    learner_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    """Custom Ray resources each learner rank asks for, as NAME AMOUNT pairs (see --actor_resources)."""
    learner_threads: int = 0
    """Torch (OpenMP) threads of each learner process. 0: the cores of its node shared among the
    learner ranks there, halved under --asynchronous (the actors generate meanwhile). Ray would
    otherwise give each learner one thread, leaving the other cores idle while it trains."""
    vllm_gpu_ratio: float | None = None
    """Share of each GPU's memory a vLLM engine takes (CUDA; vLLM's gpu_memory_utilization). Default: 0.9
    when the actors have their GPUs to themselves, 0.5 with --collocate (the learner's states stay resident)."""
    vllm_cpu_kvcache_gb: int = 1
    """KV-cache size in GiB for vLLM's CPU backend (CPU only)."""
    vllm_tensor_parallel_size: int = 1
    """Tensor-parallel size of each vLLM engine (CUDA)."""
    max_model_len: int | None = None
    """vLLM max model length; default: prompt_max_length + max(generate_max_length, eval_generate_max_length)."""
    enable_prefix_caching: bool = True
    """vLLM prefix caching: a prompt's K samples share its prefill and its KV-cache blocks (vLLM's own
    default). The cache is reset after every weight sync; seeded samples are the same with it off.
    On CPU it shares only whole 128-token blocks (benchmark/prefix_caching.py)."""

    # --- Model ---
    pretrain: str = "Qwen/Qwen2.5-Math-1.5B"
    """Policy model: a Hugging Face name or local folder."""
    ref_pretrain: str | None = None
    """Reference model for the KL terms; defaults to --pretrain."""
    critic_pretrain: str | None = None
    """Initial critic model (PPO); defaults to --pretrain."""
    tokenizer: str = ""
    """Tokenizer; defaults to --pretrain."""
    apply_chat_template: bool = False
    """Render prompts with the tokenizer's chat template (after --prompt_template)."""
    prompt_template: str = "none"
    """Named prompt template (none, r1_zero, countdown, boxed) or a format string such as
    'Q: {input}\\nA:' over the row's columns ({input} is the --input_key column)."""
    flash_attn: bool = False
    """Use flash-attention 2 in the learner (CUDA with flash-attn installed; sdpa otherwise). Needs --bf16."""
    bf16: bool = False
    """Train in bfloat16 (emulated, not faster, on CPU); the actor then also runs in bf16. Needs --zero_stage >= 1."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    lora_rank: int = 0
    """LoRA rank r of the policy (0: off, full fine-tuning). Only the adapter trains; the actors,
    checkpoints' policy/ and final_model/ get the merged model (base + B·A·alpha/r), and checkpoints
    keep the adapter in peft's format in policy_adapter/. The critic (PPO) and reference are not LoRA'd."""
    lora_alpha: int = 16
    """LoRA's alpha: the adapter's update B·A is scaled by alpha / r."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input while training, in [0, 1)."""
    target_modules: tuple[str, ...] = ("all-linear",)
    """Modules the LoRA adapter wraps: all-linear (every linear layer of attention and MLP, not the
    output layer, as peft reads it) or names such as q_proj v_proj."""

    # --- Prompt data ---
    prompt_data: str = "../shared/data/gsm8k"
    """Hugging Face dataset name, a folder saved by `datasets`, a folder of data files
    (splits named by file stem) or a .jsonl/.json/.parquet file (its split is `train`)."""
    input_key: str = "problem"
    """Column holding the question."""
    output_key: str = "answer"
    """Column holding the reference answer; several comma-separated columns give a dict."""
    train_split: str = "train"
    """Training split; slices such as 'train[:90%]' work for files."""
    max_train: int = 50000
    """Use at most this many training prompts."""
    prompt_max_length: int = 1024
    """Prompts longer than this many tokens are dropped (and counted), never truncated."""
    num_prompt_epoch: int = 1
    """Passes over the training prompts."""

    # --- Generation (training rollouts) ---
    num_samples: int = 8
    """Responses sampled per prompt (the group size K)."""
    temperature: float = 1.0
    """Sampling temperature of the training rollouts (> 0); the learner divides its logits by it too."""
    top_p: float = 1.0
    """Nucleus sampling of the training rollouts: sample among the most likely tokens whose probabilities sum to
    this (1: all tokens); below 1 the importance weights are computed over the kept tokens only."""
    top_k: int = -1
    """Sample the training rollouts among the k most likely tokens (-1: all tokens)."""
    generate_max_length: int = 1024
    """Max new tokens per response."""
    stop: tuple[str, ...] = ()
    """Stop strings besides the eos token (kept in the response), e.g. '</answer>'."""
    seeded_sampling: bool = True
    """Seed each prompt's samples from (--seed, step, its position and dataset index): a resumed run, or an
    actor restarted mid-rollout, samples exactly what the original run would have (given the same weights).
    On CUDA this makes vLLM sample with its PyTorch kernel instead of FlashInfer's; --no-seeded_sampling
    uses the engine's own random stream instead (reseeded, not restored, on resume)."""

    # --- Oracle ---
    oracle_type: Literal["reward"] = "reward"
    """Kind of feedback; rule-based scalar rewards."""
    oracle: str = "math"
    """gsm8k, countdown, math (alias deepscaler), or `module:Class` for your own RewardOracle."""
    oracle_timeout: float = 2.0
    """Seconds allowed per check; a check that runs over scores as incorrect."""
    oracle_workers: int = 2
    """Worker processes per oracle."""
    format_reward: float | None = None
    """Reward for a well-formed but wrong answer; default: the oracle's own."""

    # --- Evaluation ---
    eval_data: str = ""
    """Evaluation data; defaults to --prompt_data."""
    eval_split: str = "test"
    """Evaluation split(s), comma-separated for several benchmarks (e.g. aime,amc,math)."""
    eval_input_key: str = ""
    """Defaults to --input_key."""
    eval_output_key: str = ""
    """Defaults to --output_key."""
    max_eval: int = 1000
    """Use at most this many prompts of each evaluation benchmark."""
    eval_steps: int = 20
    """Evaluate every this many learning steps (-1: never)."""
    eval_batch_size: int = -1
    """Eval prompts per actor call; -1: --rollout_batch_size_per_device."""
    eval_generate_max_length: int = 1024
    """Max new tokens per evaluation response."""
    eval_temperature: float = 0.0
    """Sampling temperature for evaluation (0: greedy, then each prompt is decoded once and counted --eval_n times)."""
    eval_top_p: float = 1.0
    """Nucleus sampling (top-p) for evaluation (1: all tokens)."""
    eval_n: int = 1
    """Samples per eval prompt (for accuracy, pass@n and maj@n)."""

    # --- Training ---
    learning_rate: float = 1e-6
    """Peak learning rate of the policy (AdamW), reached after the warm-up (--lr_warmup_ratio)."""
    lr_scheduler: Literal["constant", "cosine_with_min_lr", "polynomial", "linear", "cosine"] = "cosine_with_min_lr"
    """LR schedule after the warm-up (oat's default); cosine_with_min_lr decays to 10% of --learning_rate."""
    lr_warmup_ratio: float = 0.03
    """Share of the scheduled optimizer steps spent warming up linearly from 0, under every --lr_scheduler."""
    max_step_adjustment: float = 1.0
    """The LR schedule spans num_prompt_epoch x floor(prompts / train_batch_size) optimizer steps
    (oat's count: one per --train_batch_size prompts, not responses) times this. A run takes
    num_samples x num_ppo_epochs times as many, so set it to that product for the schedule to end with the run."""
    max_norm: float = 1.0
    """Gradient clipping norm (0: no clipping)."""
    max_skipped_steps: int = 3
    """An optimizer step whose loss or gradient is not finite (NaN/inf) is skipped on every rank and
    counted (train/skipped_steps); more than this many in a row stop the run with an error."""
    adam_beta_1: float = 0.9
    """AdamW's beta1 (decay of the gradient's running mean), for the policy and the critic."""
    adam_beta_2: float = 0.95
    """AdamW's beta2 (decay of the squared gradient's running mean), for the policy and the critic."""
    l2: float = 0.0
    """Weight decay."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage."""
    adam_offload: bool = False
    """Offload optimizer states to CPU (ZeRO)."""
    param_offload: bool = False
    """Offload parameters to CPU (ZeRO-3)."""
    ref_offload: bool = False
    """Keep the reference model off the device between uses."""
    beta: float = 0.0
    """Coefficient of the reference-KL loss (k3); > 0 loads a reference model."""
    train_batch_size: int = 128
    """Responses per optimizer step, across all learner ranks."""
    train_batch_size_per_device: int = 1
    """Micro-batch of responses per forward/backward on one rank."""
    rollout_batch_size: int = 128
    """Prompts drawn per learning step (each sampled --num_samples times)."""
    rollout_batch_size_per_device: int = 16
    """Prompts per actor generation call."""
    pi_buffer_maxlen_per_device: int = -1
    """Most responses one learner rank may hold per step (a memory guard); -1: no limit."""
    sync_params_every: int = 1
    """Push learner weights to the actors every this many learning steps."""
    sync_check_every: int = 1
    """After every this many weight syncs, each actor scores a fixed probe (the first training
    prompt's tokens) and its log-probs are compared with the learner's; 0: never."""
    sync_check_tolerance: float | None = None
    """The largest mean absolute log-prob difference on the probe that passes the sync check; above it
    the run stops: the actors are not sampling from the trained policy. Default: 1e-3, or 0.2 with --bf16:
    100 and 3 times the largest gap measured between vLLM and the learner on the same weights
    (SmolLM2-135M on CPU, 16 GSM8K prompts as probes: up to 1.0e-5 in fp32, 0.063 in bf16); 0.2 is also
    well above the 1e-2 to 3e-2 that CUDA's bf16 kernels are reported to give."""
    max_steps: int = -1
    """Stop after this many learning steps (-1: run through the prompt epochs)."""

    # --- Saving and logging ---
    save_path: str = "./runs"
    """Folder of the runs: each writes metrics, samples, checkpoints and its final model to
    <save_path>/<--wb_run_name>/."""
    save_steps: int = -1
    """Checkpoint every this many steps (-1: only at the end)."""
    max_save_num: int = 3
    """Keep the newest this many checkpoints in <run folder>/checkpoints/; older ones are deleted."""
    resume_dir: str = ""
    """Continue the run saved in this folder."""
    seed: int = 42
    """Seeds the prompt order, each prompt's sampling seeds (--seeded_sampling; otherwise actor i's engine
    gets seed + i) and the learner (torch, mini-batch shuffling): a run with the same flags draws the same prompts."""
    rnd_seed: bool = False
    """Draw the seed from the clock instead of --seed."""
    log_samples: int = 2
    """Full prompt/response/reward examples written to samples.jsonl per step."""
    use_wb: bool = False
    """Log to Weights & Biases (WANDB_MODE=offline works without network)."""
    use_tb: bool = False
    """Also write the metrics.jsonl rows as TensorBoard scalars to <run folder>/tb/ (`tensorboard --logdir`)."""
    wb_org: str | None = None
    """Weights & Biases entity (team or user) to log to; default: your wandb default entity."""
    wb_group: str | None = None
    """Weights & Biases group that collects related runs; default: none."""
    wb_project: str = "oat_cpgd"
    """Weights & Biases project to log to."""
    wb_run_name: str | None = None
    """Run name (also the run folder under --save_path); default: generated."""
    plot: bool = False
    """Redraw curves.png in the run folder after every step (it is always drawn at the end)."""
    dry_run: bool = False
    """Print the resolved configuration and exit without starting anything."""

    def resolve(self) -> None:
        """Fill derived defaults in place and check the flags agree; raise ConfigError naming them."""
        if self.rnd_seed:
            self.seed = int(time.time() * 1000) % (2**31)
            self.rnd_seed = False  # resolved: a resumed run keeps this seed
        self.tokenizer = self.tokenizer or self.pretrain
        self.ref_pretrain = self.ref_pretrain or self.pretrain
        self.critic_pretrain = self.critic_pretrain or self.pretrain
        self.eval_data = self.eval_data or self.prompt_data
        self.eval_input_key = self.eval_input_key or self.input_key
        self.eval_output_key = self.eval_output_key or self.output_key
        if self.eval_batch_size == -1:
            self.eval_batch_size = self.rollout_batch_size_per_device
        if self.sync_check_tolerance is None:
            self.sync_check_tolerance = SYNC_CHECK_TOLERANCE["bf16" if self.bf16 else "fp32"]
        if self.max_model_len is None:
            self.max_model_len = self.prompt_max_length + max(self.generate_max_length, self.eval_generate_max_length)
        if self.wb_run_name is None:
            self.wb_run_name = f"{self.run_kind()}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.oracle = resolve_oracle_name(self.oracle)
        self.check()

    def run_kind(self) -> str:
        return "run"

    def check(self) -> None:
        need(
            not (self.collocate and self.asynchronous),
            "--collocate and --asynchronous cannot be combined: "
            "asynchronous training overlaps generation and learning, which collocated roles cannot.",
        )
        need(self.gpus >= 1, f"--gpus must be >= 1, got {self.gpus}.")
        need(self.learner_threads >= 0, f"--learner_threads must be >= 0 (0: automatic), got {self.learner_threads}.")
        responses = self.rollout_batch_size * self.num_samples
        need(
            responses % self.train_batch_size == 0,
            f"--rollout_batch_size ({self.rollout_batch_size}) x --num_samples ({self.num_samples}) = {responses} "
            f"responses per step must be divisible by --train_batch_size ({self.train_batch_size}).",
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
            need(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}.")
        for name in (
            "eval_batch_size",
            "eval_generate_max_length",
            "max_train",
            "max_eval",
            "max_save_num",
            "vllm_tensor_parallel_size",
            "vllm_cpu_kvcache_gb",
        ):
            value = getattr(self, name)
            default = " (its default -1 means --rollout_batch_size_per_device)" if name == "eval_batch_size" else ""
            need(value >= 1, f"--{name} must be >= 1{default}, got {value}.")
        for name in ("eval_steps", "save_steps", "max_steps", "num_actors"):
            value = getattr(self, name)
            need(value == -1 or value >= 1, f"--{name} must be >= 1, or -1 for its default, got {value}.")
        longest = self.prompt_max_length + max(self.generate_max_length, self.eval_generate_max_length)
        need(
            self.max_model_len >= longest,
            f"--max_model_len ({self.max_model_len}) is shorter than --prompt_max_length ({self.prompt_max_length}) "
            f"+ max(--generate_max_length, --eval_generate_max_length) "
            f"({max(self.generate_max_length, self.eval_generate_max_length)}) = {longest} tokens.",
        )
        need(
            self.vllm_gpu_ratio is None or 0 < self.vllm_gpu_ratio <= 1,
            f"--vllm_gpu_ratio is a share of GPU memory and must be in (0, 1], got {self.vllm_gpu_ratio}.",
        )
        need(self.learning_rate > 0, f"--learning_rate must be > 0, got {self.learning_rate}.")
        need(0 <= self.lr_warmup_ratio <= 1, f"--lr_warmup_ratio must be in [0, 1], got {self.lr_warmup_ratio}.")
        need(self.max_step_adjustment > 0, f"--max_step_adjustment must be > 0, got {self.max_step_adjustment}.")
        need(self.max_norm >= 0, f"--max_norm must be >= 0 (0: no gradient clipping), got {self.max_norm}.")
        need(
            0 <= self.adam_beta_1 < 1 and 0 <= self.adam_beta_2 < 1,
            f"--adam_beta_1 and --adam_beta_2 must be in [0, 1), got {self.adam_beta_1}, {self.adam_beta_2}.",
        )
        need(self.l2 >= 0, f"--l2 (weight decay) must be >= 0, got {self.l2}.")
        need(self.beta >= 0, f"--beta (reference-KL loss coefficient) must be >= 0, got {self.beta}.")
        need(self.oracle_timeout > 0, f"--oracle_timeout must be > 0 seconds, got {self.oracle_timeout}.")
        need(self.oracle_workers >= 0, f"--oracle_workers must be >= 0 (0: checks inline), got {self.oracle_workers}.")
        need(self.log_samples >= 0, f"--log_samples must be >= 0, got {self.log_samples}.")
        for name in ("max_actor_restarts", "max_skipped_steps", "sync_check_every"):
            need(getattr(self, name) >= 0, f"--{name} must be >= 0, got {getattr(self, name)}.")
        need(self.sync_check_tolerance > 0, f"--sync_check_tolerance must be > 0, got {self.sync_check_tolerance}.")
        need(self.eval_temperature >= 0, f"--eval_temperature must be >= 0 (0: greedy), got {self.eval_temperature}.")
        need(self.top_k == -1 or self.top_k >= 1, f"--top_k must be >= 1, or -1 for no top-k, got {self.top_k}.")
        need(0 < self.top_p <= 1 and 0 < self.eval_top_p <= 1, "--top_p and --eval_top_p must be in (0, 1].")
        need(
            self.temperature > 0,
            "--temperature must be > 0 for training rollouts (use --eval_temperature 0 for greedy eval).",
        )
        need(self.param_offload is False or self.zero_stage == 3, "--param_offload needs --zero-stage 3.")
        need(
            not self.flash_attn or self.bf16,
            "--flash_attn needs --bf16: the flash-attention kernel runs in bf16/fp16 only and rejects the fp32 "
            "weights of a run without --bf16 at the first forward.",
        )
        need(
            not (self.bf16 and self.zero_stage == 0),
            "--bf16 needs --zero_stage 1 or higher: without ZeRO, DeepSpeed cannot accumulate bf16 gradients in "
            "fp32 (it raises 'unsupported mix of bf16 and fp32 gradient accumulation' at start-up).",
        )
        need(self.lora_rank >= 0, f"--lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}.")
        need(self.lora_alpha > 0, f"--lora_alpha must be > 0, got {self.lora_alpha}.")
        need(0 <= self.lora_dropout < 1, f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        need(
            len(self.target_modules) == 1 or (self.target_modules and "all-linear" not in self.target_modules),
            f"--target_modules takes all-linear alone or module names, got {' '.join(self.target_modules) or 'none'}.",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)


@dataclass
class PPOArgs(Args):
    """PPO-family arguments: PPO (critic + GAE), GRPO and Dr. GRPO."""

    critic_type: str = "ppo"
    """ppo: critic + GAE; grpo: group-normalised advantages; drgrpo: group-centred, constant
    normaliser; cpgd: clipped policy gradient with policy drift (use run_cpgd); any name of
    oat_cpgd.algorithms.algorithm_names(), or `my_module:NAME`, an Algorithm of your own (imported from
    the launch directory)."""
    num_ppo_epochs: int = 1
    """Passes over each rollout's responses."""
    mini_train_batch_size_per_device: int = 1
    """Micro-batch for forward passes without gradient (old and reference log-probs, values)."""
    packing: bool = False
    """Cut each rank's responses into micro-batches by token count (--train_max_tokens_per_device,
    padding included) instead of --train_batch_size_per_device / --mini_train_batch_size_per_device
    responses: longest first, each into the first micro-batch it fits. Short responses then share a
    pass; the loss and its gradient do not depend on the cut (exact accumulation)."""
    train_max_tokens_per_device: int = 16384
    """With --packing: the most tokens (prompt + response, padded to the micro-batch's longest) per
    forward/backward pass on one rank. At least --prompt_max_length + --generate_max_length."""
    logprob_chunk_tokens: int = 1024
    """Response tokens whose vocabulary logits exist at once in the learner's log-prob passes (0: a
    micro-batch's all at once). The output layer runs on this many tokens at a time, and backward
    recomputes each chunk's logits rather than keeping them: memory for the logits stays at this
    many tokens x vocabulary, whatever the response length, for one more output-layer pass. (A model
    whose logits are transformed after the output layer, a soft cap say, computes all its response
    logits itself; only the log-softmax goes in chunks.)"""
    loss_agg_mode: AggMode | None = None
    """How token losses are averaged; default: the algorithm's (token-mean for ppo and
    reinforce_pp_baseline, seq-mean-token-sum-norm for drgrpo, seq-mean-token-mean otherwise)."""
    clip_low: float | None = None
    """Lower clip range epsilon_low of the ratio (1: no lower bound); default: the algorithm's, 0.2 (GSPO: 3e-4;
    CISPO: 1; GMPO: 0.4, of the log-ratio)."""
    clip_high: float | None = None
    """Upper clip range epsilon_high; default: the algorithm's, 0.2 (GSPO: 4e-4; CISPO: 4; GMPO: 0.4, of the
    log-ratio); DAPO's clip-higher uses 0.28."""
    dual_clip: float | None = None
    """Dual-clip constant for negative advantages (PPO-clip losses), e.g. 3.0."""
    is_correction: ISCorrection = "tis"
    """Importance correction for the gap between the actor's (behaviour) log-probs and the learner's
    (proximal) ones, w = exp(old_logp - actor_logp) per token: tis multiplies the token loss by
    min(w, --tis_c), mis by w but drops tokens with w > --tis_c, none by 1. With --top_p < 1 or
    --top_k, vLLM reports log-probs renormalised over the tokens it kept; the learner's side is
    then restricted to the same tokens, so w and train/logprob_gap_actor_learner compare like with like."""
    tis_c: float = 2.0
    """C, the cap of the importance weights (oat's tis_c)."""
    kl_penalty_coef: float = 0.0
    """Reference-KL reward shaping, every algorithm: -coef x (old_logp - ref_logp) per token (PPO),
    or summed over the response and added to its reward before the group advantage; > 0 loads a reference model."""
    non_stop_penalty: float = 0.0
    """Added to the reward of responses truncated at --generate_max_length."""
    overlong_buffer_len: int = 0
    """DAPO's soft overlong punishment: responses longer than generate_max_length minus this many
    tokens lose up to --overlong_penalty_factor, linearly (0: off)."""
    overlong_penalty_factor: float = 1.0
    """The punishment at --generate_max_length tokens."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (group methods): drop groups whose oracle rewards are all equal and
    draw more prompts until the step has --rollout_batch_size informative groups."""
    dynamic_sampling_max_draws: int = 4
    """Most extra draws of --rollout_batch_size prompts per step; when reached, the step is filled
    up with uninformative groups (advantage 0), and train/informative_groups says how many were not."""
    reward_scale: float = 1.0
    """Multiplies each response's reward (oracle score plus the penalties above) before the advantage."""
    whiten_adv: bool = False
    """Whiten the advantages over all response tokens of the whole batch (all learner ranks), any algorithm."""
    gamma: float = 1.0
    """Discount factor of GAE (PPO), in [0, 1]."""
    lam: float = 1.0
    """GAE's lambda (PPO), in [0, 1]: 1 uses the full returns, 0 one-step temporal differences."""
    vf_coef: float = 1.0
    """Weight of the critic's value loss (PPO)."""
    cliprange_value: float = 0.2
    """The critic's new values are clipped to within this of the old ones in its loss (PPO)."""
    critic_learning_rate: float = 9e-6
    """Peak learning rate of the critic (PPO), under the same schedule as the policy's."""
    critic_max_step_adjustment: float = 1.0
    """The critic's --max_step_adjustment: its LR schedule spans the policy's count of optimizer steps times this."""

    def run_kind(self) -> str:
        return self.critic_type.rpartition(":")[2]  # `my_module:NAME` runs are NAME-...

    def resolve(self) -> None:
        """Also fill the algorithm's defaults: --loss_agg_mode, --clip_low, --clip_high."""
        self.critic_type = resolve_algorithm_name(self.critic_type)
        algorithm = get_algorithm(self.critic_type)
        self.loss_agg_mode = self.loss_agg_mode or algorithm.agg_mode
        self.clip_low = algorithm.clip[0] if self.clip_low is None else self.clip_low
        self.clip_high = algorithm.clip[1] if self.clip_high is None else self.clip_high
        super().resolve()
        if self.non_stop_penalty > 0:
            logger.warning(
                "--non_stop_penalty %s is positive: it rewards responses truncated at --generate_max_length "
                "(a penalty is <= 0, e.g. -1).",
                self.non_stop_penalty,
            )

    def check(self) -> None:
        super().check()
        algorithm = get_algorithm(self.critic_type)
        try:
            algorithm.loss_options(self)
            algorithm.advantage_options(self)
        except AttributeError as err:
            raise ConfigError(
                f"--critic_type {self.critic_type} needs the flag --{err.name}, which {type(self).__name__} "
                "lacks: run `python -m oat_cpgd.experiment.run_cpgd`."
            ) from None
        need(
            algorithm.needs_critic or self.num_samples >= 2,
            f"--critic_type {self.critic_type} compares responses within a group: "
            f"--num_samples must be >= 2, got {self.num_samples}.",
        )
        need(
            not (self.dynamic_sampling and algorithm.needs_critic),
            f"--dynamic_sampling drops groups whose rewards are all equal, which only group methods skip; "
            f"--critic_type {self.critic_type} learns from them through its critic.",
        )
        need(self.mini_train_batch_size_per_device >= 1, "--mini_train_batch_size_per_device must be >= 1.")
        longest = self.prompt_max_length + self.generate_max_length
        need(
            not self.packing or self.train_max_tokens_per_device >= longest,
            f"--train_max_tokens_per_device ({self.train_max_tokens_per_device}) must hold the longest response, "
            f"--prompt_max_length + --generate_max_length = {longest} tokens, with --packing.",
        )
        need(
            self.logprob_chunk_tokens >= 0,
            f"--logprob_chunk_tokens must be >= 0 (0: no chunks), got {self.logprob_chunk_tokens}.",
        )
        need(
            0 <= self.clip_low <= 1 and self.clip_high >= 0,
            f"--clip_low must be in [0, 1] (1: no lower bound) and --clip_high >= 0, got {self.clip_low}, "
            f"{self.clip_high}.",
        )
        need(self.tis_c > 0, f"--tis_c must be > 0, got {self.tis_c}.")
        need(
            0 <= self.overlong_buffer_len <= self.generate_max_length,
            f"--overlong_buffer_len ({self.overlong_buffer_len}) must be in [0, --generate_max_length "
            f"({self.generate_max_length})].",
        )
        need(
            self.dynamic_sampling_max_draws >= 0,
            f"--dynamic_sampling_max_draws must be >= 0, got {self.dynamic_sampling_max_draws}.",
        )
        need(self.num_ppo_epochs >= 1, f"--num_ppo_epochs must be >= 1, got {self.num_ppo_epochs}.")
        need(self.critic_learning_rate > 0, f"--critic_learning_rate must be > 0, got {self.critic_learning_rate}.")
        need(
            self.critic_max_step_adjustment > 0,
            f"--critic_max_step_adjustment must be > 0, got {self.critic_max_step_adjustment}.",
        )
        need(
            self.kl_penalty_coef >= 0,
            f"--kl_penalty_coef (reference-KL reward shaping) must be >= 0, got {self.kl_penalty_coef}.",
        )
        need(
            self.reward_scale > 0,
            f"--reward_scale must be > 0 (a negative one rewards failure), got {self.reward_scale}.",
        )
        need(
            0 <= self.gamma <= 1 and 0 <= self.lam <= 1,
            f"--gamma and --lam must be in [0, 1], got {self.gamma}, {self.lam}.",
        )
        need(self.vf_coef >= 0, f"--vf_coef must be >= 0, got {self.vf_coef}.")
        need(self.cliprange_value > 0, f"--cliprange_value must be > 0, got {self.cliprange_value}.")
        need(
            self.overlong_penalty_factor >= 0,
            f"--overlong_penalty_factor must be >= 0 (it is subtracted), got {self.overlong_penalty_factor}.",
        )
        need(
            self.dual_clip is None or self.dual_clip > 1,
            f"--dual_clip must be > 1 (it bounds the loss at dual_clip x the advantage), got {self.dual_clip}.",
        )

    @property
    def agg_mode(self) -> str:
        return self.loss_agg_mode or get_algorithm(self.critic_type).agg_mode

    @property
    def needs_reference(self) -> bool:
        return get_algorithm(self.critic_type).needs_reference or self.beta > 0 or self.kl_penalty_coef > 0


@dataclass
class CPGDArgs(PPOArgs):
    """CPGD: clipped policy gradient with policy drift (arXiv 2505.12504)."""

    critic_type: str = "cpgd"
    policy_drift_coeff: float = 0.01
    """alpha: weight of the policy-drift regulariser."""
    drift_clip: float = 2.0
    """c_drift: the drift gradient's ratio term min(rho - 1, c_drift)."""
    cpgd_weight: Literal[tuple(CPGD_WEIGHTS)] = "std"
    """Per-prompt advantage weight omega: 1/std (std), min(c_w, G/G_nonzero) (clip_filter) or 1 (equal)."""
    clip_filter_max_weight: float = 3.0
    """c_w, the cap of the clip_filter weight."""

    def check(self) -> None:
        super().check()
        need(self.policy_drift_coeff >= 0, f"--policy_drift_coeff must be >= 0, got {self.policy_drift_coeff}.")
        need(self.drift_clip > 0, f"--drift_clip must be > 0, got {self.drift_clip}.")
        need(
            self.clip_filter_max_weight > 0, f"--clip_filter_max_weight must be > 0, got {self.clip_filter_max_weight}."
        )
