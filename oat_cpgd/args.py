"""The flags, layered like oat's: general -> PPO family -> CPGD.

Every field is a flag (parsed by oat_cpgd.cli); both spellings work (`--learning_rate` and
`--learning-rate`). Each field names its `--help` section (`flag(section, default)`), and its attribute
docstring is its help. The checks and derived defaults are in oat_cpgd.arg_checks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from oat_cpgd import arg_checks
from oat_cpgd.algorithms import AGG_MODES, CPGD_WEIGHTS, IS_CORRECTIONS, get_algorithm
from oat_cpgd.arg_checks import SYNC_CHECK_TOLERANCE, ConfigError, need  # noqa: F401  (re-exported)

AggMode = Literal[AGG_MODES]
ISCorrection = Literal[IS_CORRECTIONS]

SECTIONS = (
    "resources",
    "model",
    "data",
    "generation",
    "oracle",
    "environment",
    "evaluation",
    "training",
    "sentinel",
    "saving_and_logging",
    "algorithm",
    "rewards_and_advantages",
    "critic",
    "cpgd",
)
"""The `--help` sections, in the order `--help` shows them."""


def flag(section: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING) -> Any:
    """A field shown in `section` of `--help` (one of SECTIONS); `factory` for a mutable default."""
    if section not in SECTIONS:
        raise ValueError(f"unknown --help section {section!r}; known: {', '.join(SECTIONS)}")
    return dataclasses.field(default=default, default_factory=factory, metadata={"section": section})


@dataclass
class Args:
    """General arguments: resources, model, data, generation, oracle, training, logging."""

    # --- Resources ---
    gpus: int = flag("resources", 1)
    """Devices. With CUDA: GPUs, split between actors and learners (or all shared with
    --collocate). Without GPUs: the number of learner ranks (processes); the actors take
    their share of the CPU cores."""
    num_actors: int = flag("resources", -1)
    """vLLM actor engines. -1: one per GPU with --collocate, half the GPUs otherwise; one on CPU."""
    max_actor_restarts: int = flag("resources", 3)
    """Times Ray restarts an actor whose process died (OOM, segfault, killed); its lost prompts are
    redone after it rejoins the weight transfer and gets the current weights (misc/actor_restarts)."""
    max_learner_restarts: int = flag("resources", 3)
    """Times the learner ranks are started again after one died or stalled; they load the latest
    checkpoint and the steps since are replayed (misc/learner_restarts, misc/steps_replayed)."""
    role_timeout: float = flag("resources", 1800.0)
    """Seconds the loop waits for any one call on a role (a rollout chunk, a learning step, a sync)
    before it counts the role as stalled and restarts it."""
    collocate: bool = flag("resources", False)
    """Actors and learners share the same devices; on CUDA the vLLM engine sleeps while the learner trains."""
    asynchronous: bool = flag("resources", False)
    """Overlap the next rollout with learning (one step off-policy). Not with --collocate."""
    ray_address: str | None = flag("resources", None)
    """Attach to an existing Ray cluster (e.g. `auto` or `127.0.0.1:6379`); default: start a local one."""
    actor_resources: dict[str, float] = flag("resources", factory=dict)
    """Custom Ray resources each actor asks for, as NAME AMOUNT pairs (e.g. `--actor_resources actor_node 1`
    with `ray start --resources '{"actor_node": 8}'` on the nodes meant for generation)."""
    learner_resources: dict[str, float] = flag("resources", factory=dict)
    """Custom Ray resources each learner rank asks for, as NAME AMOUNT pairs (see --actor_resources)."""
    learner_threads: int = flag("resources", 0)
    """Torch (OpenMP) threads of each learner process. 0: the cores of its node shared among the
    learner ranks there, halved under --asynchronous (the actors generate meanwhile). Ray would
    otherwise give each learner one thread, leaving the other cores idle while it trains."""
    vllm_gpu_ratio: float | None = flag("resources", None)
    """Share of each GPU's memory a vLLM engine takes (CUDA; vLLM's gpu_memory_utilization). Default: 0.9
    when the actors have their GPUs to themselves, 0.5 with --collocate (the learner's states stay resident)."""
    vllm_cpu_kvcache_gb: int = flag("resources", 1)
    """KV-cache size in GiB for vLLM's CPU backend (CPU only)."""
    vllm_tensor_parallel_size: int = flag("resources", 1)
    """Tensor-parallel size of each vLLM engine (CUDA)."""
    max_model_len: int | None = flag("resources", None)
    """vLLM max model length; default: prompt_max_length + max(generate_max_length, eval_generate_max_length)."""
    enable_prefix_caching: bool = flag("resources", True)
    """vLLM prefix caching: a prompt's K samples share its prefill and its KV-cache blocks (vLLM's own
    default). The cache is reset after every weight sync; seeded samples are the same with it off.
    On CPU it shares only whole 128-token blocks (benchmark/prefix_caching.py)."""

    # --- Model ---
    pretrain: str = flag("model", "Qwen/Qwen2.5-Math-1.5B")
    """Policy model: a Hugging Face name or local folder."""
    ref_pretrain: str | None = flag("model", None)
    """Reference model for the KL terms; defaults to --pretrain."""
    critic_pretrain: str | None = flag("model", None)
    """Initial critic model (PPO); defaults to --pretrain."""
    tokenizer: str = flag("model", "")
    """Tokenizer; defaults to --pretrain."""
    apply_chat_template: bool = flag("model", False)
    """Render prompts with the tokenizer's chat template (after --prompt_template)."""
    prompt_template: str = flag("model", "none")
    """Named prompt template ({prompt_templates}) or a format string such as
    'Q: {input}\\nA:' over the row's columns ({input} is the --input_key column)."""
    flash_attn: bool = flag("model", False)
    """Use flash-attention 2 in the learner (CUDA with flash-attn installed; sdpa otherwise). Needs --bf16."""
    bf16: bool = flag("model", False)
    """Train in bfloat16 (emulated, not faster, on CPU); the actor then also runs in bf16. Needs --zero_stage >= 1."""
    gradient_checkpointing: bool = flag("model", False)
    """Recompute activations in the backward pass to save memory."""
    lora_rank: int = flag("model", 0)
    """LoRA rank r of the policy (0: off, full fine-tuning). Only the adapter trains; the actors,
    checkpoints' policy/ and final_model/ get the merged model (base + B·A·alpha/r), and checkpoints
    keep the adapter in peft's format in policy_adapter/. The critic (PPO) and reference are not LoRA'd."""
    lora_alpha: int = flag("model", 16)
    """LoRA's alpha: the adapter's update B·A is scaled by alpha / r."""
    lora_dropout: float = flag("model", 0.0)
    """Dropout on the adapter's input while training, in [0, 1)."""
    target_modules: tuple[str, ...] = flag("model", ("all-linear",))
    """Modules the LoRA adapter wraps: all-linear (every linear layer of attention and MLP, not the
    output layer, as peft reads it) or names such as q_proj v_proj."""

    # --- Prompt data ---
    prompt_data: str = flag("data", "../shared/data/gsm8k")
    """Hugging Face dataset name, a folder saved by `datasets`, a folder of data files
    (splits named by file stem) or a .jsonl/.json/.parquet file (its split is `train`)."""
    input_key: str = flag("data", "problem")
    """Column holding the question."""
    output_key: str = flag("data", "answer")
    """Column holding the reference answer; several comma-separated columns give a dict."""
    train_split: str = flag("data", "train")
    """Training split; slices such as 'train[:90%]' work for files."""
    max_train: int = flag("data", 50000)
    """Use at most this many training prompts."""
    prompt_max_length: int = flag("data", 1024)
    """Prompts longer than this many tokens are dropped (and counted), never truncated."""
    num_prompt_epoch: int = flag("data", 1)
    """Passes over the training prompts."""

    # --- Generation (training rollouts) ---
    num_samples: int = flag("generation", 8)
    """Responses sampled per prompt (the group size K)."""
    temperature: float = flag("generation", 1.0)
    """Sampling temperature of the training rollouts (> 0); the learner divides its logits by it too."""
    top_p: float = flag("generation", 1.0)
    """Nucleus sampling of the training rollouts: sample among the most likely tokens whose probabilities sum to
    this (1: all tokens); below 1 the importance weights are computed over the kept tokens only."""
    top_k: int = flag("generation", -1)
    """Sample the training rollouts among the k most likely tokens (-1: all tokens)."""
    generate_max_length: int = flag("generation", 1024)
    """Max new tokens per response."""
    stop: tuple[str, ...] = flag("generation", ())
    """Stop strings besides the eos token (kept in the response), e.g. '</answer>'."""
    seeded_sampling: bool = flag("generation", True)
    """Seed each prompt's samples from (--seed, step, its position and dataset index): a resumed run, or an
    actor restarted mid-rollout, samples exactly what the original run would have (given the same weights).
    On CUDA this makes vLLM sample with its PyTorch kernel instead of FlashInfer's; --no-seeded_sampling
    uses the engine's own random stream instead (reseeded, not restored, on resume)."""

    # --- Oracle ---
    oracle: str = flag("oracle", "math")
    """The reward oracle: {oracles}, or `module:Class` for your own RewardOracle."""
    oracle_timeout: float = flag("oracle", 2.0)
    """Seconds allowed per check; a check that runs over scores as incorrect."""
    oracle_workers: int = flag("oracle", 2)
    """Worker processes per oracle."""
    format_reward: float | None = flag("oracle", None)
    """Reward for a well-formed but wrong answer; default: the oracle's own."""

    # --- Environment (multi-turn episodes) ---
    env: str = flag("environment", "")
    """A multi-turn environment: `python` (code blocks run in a sandbox, --oracle scores the final answer),
    `oracle` (one step: --oracle scores the response, as without --env), or `module:Class` for your own
    Environment. Empty: single-turn responses scored by --oracle."""
    max_turns: int = flag("environment", 8)
    """Model turns per episode at most; an episode cut here is truncated (--non_stop_penalty)."""
    max_episode_tokens: int = flag("environment", -1)
    """Tokens of an episode's response at most, the model's and the environment's together (each model
    turn also at most --generate_max_length); -1: --generate_max_length."""
    episode_reward: Literal["last", "sum"] = flag("environment", "last")
    """An episode's reward: its final step's (`last`), or the sum of its steps' (`sum`)."""
    tool_timeout: float = flag("environment", 1.0)
    """Seconds a `python` tool call may run (sandbox start-up included); under --oracle_timeout, which
    bounds every environment call."""

    # --- Evaluation ---
    eval_data: str = flag("evaluation", "")
    """Evaluation data; defaults to --prompt_data."""
    eval_split: str = flag("evaluation", "test")
    """Evaluation split(s), comma-separated for several benchmarks (e.g. aime,amc,math)."""
    eval_input_key: str = flag("evaluation", "")
    """Defaults to --input_key."""
    eval_output_key: str = flag("evaluation", "")
    """Defaults to --output_key."""
    max_eval: int = flag("evaluation", 1000)
    """Use at most this many prompts of each evaluation benchmark."""
    eval_steps: int = flag("evaluation", 20)
    """Evaluate every this many learning steps (-1: never)."""
    eval_batch_size: int = flag("evaluation", -1)
    """Eval prompts per actor call; -1: --rollout_batch_size_per_device."""
    eval_generate_max_length: int = flag("evaluation", 1024)
    """Max new tokens per evaluation response."""
    eval_temperature: float = flag("evaluation", 0.0)
    """Sampling temperature for evaluation (0: greedy, then each prompt is decoded once and counted --eval_n times)."""
    eval_top_p: float = flag("evaluation", 1.0)
    """Nucleus sampling (top-p) for evaluation (1: all tokens)."""
    eval_n: int = flag("evaluation", 1)
    """Samples per eval prompt (for accuracy, pass@n and maj@n)."""

    # --- Training ---
    learning_rate: float = flag("training", 1e-6)
    """Peak learning rate of the policy (AdamW), reached after the warm-up (--lr_warmup_ratio)."""
    lr_scheduler: Literal["constant", "cosine_with_min_lr", "polynomial", "linear", "cosine"] = flag(
        "training", "cosine_with_min_lr"
    )
    """LR schedule after the warm-up (oat's default); cosine_with_min_lr decays to 10% of --learning_rate."""
    lr_warmup_ratio: float = flag("training", 0.03)
    """Share of the scheduled optimizer steps spent warming up linearly from 0, under every --lr_scheduler."""
    max_step_adjustment: float | None = flag("training", None)
    """Default (auto): the LR schedule ends with the run. Given, it keeps oat's meaning: the schedule spans
    num_prompt_epoch x floor(prompts / train_batch_size) optimizer steps (oat's count: one per
    --train_batch_size prompts, not responses) times this; a run takes --num_samples x --num_ppo_epochs
    times as many. A schedule that ends before the run holds its final LR (with a warning)."""
    max_norm: float = flag("training", 1.0)
    """Gradient clipping norm (0: no clipping)."""
    max_skipped_steps: int = flag("training", 3)
    """An optimizer step whose loss or gradient is not finite (NaN/inf) is skipped on every rank and
    counted (train/skipped_steps); more than this many in a row stop the run with an error."""
    adam_beta_1: float = flag("training", 0.9)
    """AdamW's beta1 (decay of the gradient's running mean), for the policy and the critic."""
    adam_beta_2: float = flag("training", 0.95)
    """AdamW's beta2 (decay of the squared gradient's running mean), for the policy and the critic."""
    l2: float = flag("training", 0.0)
    """Weight decay."""
    zero_stage: Literal[0, 1, 2, 3] = flag("training", 2)
    """DeepSpeed ZeRO stage."""
    adam_offload: bool = flag("training", False)
    """Offload optimizer states to CPU (ZeRO)."""
    param_offload: bool = flag("training", False)
    """Offload parameters to CPU (ZeRO-3)."""
    ref_offload: bool = flag("training", False)
    """Keep the reference model off the device between uses."""
    beta: float = flag("training", 0.0)
    """Coefficient of the reference-KL loss (k3); > 0 loads a reference model."""
    train_batch_size: int = flag("training", 128)
    """Responses per optimizer step, across all learner ranks."""
    train_batch_size_per_device: int = flag("training", 1)
    """Micro-batch of responses per forward/backward on one rank."""
    rollout_batch_size: int = flag("training", 128)
    """Prompts drawn per learning step (each sampled --num_samples times)."""
    rollout_batch_size_per_device: int = flag("training", 16)
    """Prompts per actor generation call."""
    sync_params_every: int = flag("training", 1)
    """Push learner weights to the actors every this many learning steps."""
    sync_check_every: int = flag("training", 1)
    """After every this many weight syncs, each actor scores a fixed probe (the first training
    prompt's tokens) and its log-probs are compared with the learner's; 0: never."""
    weight_digest_every: int = flag("training", 10)
    """The first sync check and every this many after it also compare each actor's weights with the
    learner's, tensor by tensor, exactly (oat_cpgd.weight_digest: it names a tensor the engine skipped,
    mis-merged or permuted); it costs more than the probe (on CPU 0.3 s for the tiny model, ~10 s for
    SmolLM2-135M). 0: never."""
    sync_check_tolerance: float | None = flag("training", None)
    """The largest mean absolute log-prob difference on the probe that passes the sync check; above it
    the run stops: the actors are not sampling from the trained policy. Default: 1e-3, or 0.2 with --bf16:
    100 and 3 times the largest gap measured between vLLM and the learner on the same weights
    (SmolLM2-135M on CPU, 16 GSM8K prompts as probes: up to 1.0e-5 in fp32, 0.063 in bf16); 0.2 is also
    well above the 1e-2 to 3e-2 that CUDA's bf16 kernels are reported to give."""
    max_steps: int = flag("training", -1)
    """Stop after this many learning steps (-1: run through the prompt epochs)."""

    # --- Sentinel ---
    sentinel: bool = flag("sentinel", False)
    """Watch every step's metrics for the start of a collapse (oat_cpgd.sentinel: KL, importance weights,
    drift, gradient norm, entropy, length, the reward's fall, non-finite values, each against the run's own
    recent history). When one fires, the run goes back to a rollback point from before it, in-process, and
    goes on with --sentinel_remedy (misc/rollbacks; each alarm in <run>/sentinel.jsonl)."""
    sentinel_keep: int = flag("sentinel", 1)
    """A rollback point every this many steps: a checkpoint in <run>/rollback/, the newest 3 kept. A
    rollback goes to the newest from at least 2 steps before the alarm (the policy that sampled the
    alarming step's rollout already had the bad update)."""
    sentinel_k: float = flag("sentinel", 8.0)
    """A signal fires beyond this many robust standard deviations of its recent history."""
    sentinel_max_drift: float = flag("sentinel", 0.1)
    """A policy drift (train/policy_drift: the k3 KL, in nats per token, from the policy that sampled the step
    to the one its updates reached) above this fires at any step, history or not: a trust region. PPO's
    implementations stop a step's epochs near 0.01-0.05; the demo's runs stay below 0.005. It catches a
    run whose updates are too large from its first step, which has no healthy history to be measured
    against. 0: no bound."""
    sentinel_window: int = flag("sentinel", 10)
    """The recent history: this many of the last healthy steps."""
    sentinel_remedy: Literal["lr", "skip", "both", "none"] = flag("sentinel", "both")
    """After a rollback: lower the LR by --sentinel_lr_factor (for the rest of the run), skip the prompts
    of the steps rolled back (the prompt stream moves on past them), both, or none (replay as before)."""
    sentinel_lr_factor: float = flag("sentinel", 0.5)
    """The LR's factor at each rollback (--sentinel_remedy lr or both)."""
    max_rollbacks: int = flag("sentinel", 3)
    """Rollbacks in a run; one more alarm stops it with an error naming every alarm."""

    # --- Saving and logging ---
    save_path: str = flag("saving_and_logging", "./runs")
    """Folder of the runs: each writes metrics, samples, checkpoints and its final model to
    <save_path>/<--wb_run_name>/."""
    save_steps: int = flag("saving_and_logging", -1)
    """Checkpoint every this many steps (-1: only at the end)."""
    max_save_num: int = flag("saving_and_logging", 3)
    """Keep the newest this many checkpoints in <run folder>/checkpoints/; older ones are deleted."""
    resume_dir: str = flag("saving_and_logging", "")
    """Continue the run saved in this folder."""
    seed: int = flag("saving_and_logging", 42)
    """Seeds the prompt order, each prompt's sampling seeds (--seeded_sampling; otherwise actor i's engine
    gets seed + i) and the learner (torch, mini-batch shuffling): a run with the same flags draws the same prompts."""
    rnd_seed: bool = flag("saving_and_logging", False)
    """Draw the seed from the clock instead of --seed."""
    log_samples: int = flag("saving_and_logging", 2)
    """Full prompt/response/reward examples written to samples.jsonl per step."""
    use_wb: bool = flag("saving_and_logging", False)
    """Log to Weights & Biases (WANDB_MODE=offline works without network)."""
    use_tb: bool = flag("saving_and_logging", False)
    """Also write the metrics.jsonl rows as TensorBoard scalars to <run folder>/tb/ (`tensorboard --logdir`)."""
    wb_org: str | None = flag("saving_and_logging", None)
    """Weights & Biases entity (team or user) to log to; default: your wandb default entity."""
    wb_group: str | None = flag("saving_and_logging", None)
    """Weights & Biases group that collects related runs; default: none."""
    wb_project: str = flag("saving_and_logging", "oat_cpgd")
    """Weights & Biases project to log to."""
    wb_run_name: str | None = flag("saving_and_logging", None)
    """Run name (also the run folder under --save_path); default: generated."""
    plot: bool = flag("saving_and_logging", False)
    """Redraw curves.png in the run folder after every step (it is always drawn at the end)."""
    verbose: bool = flag("saving_and_logging", False)
    """Show every library's log on the console (vLLM, Ray workers, DeepSpeed, torch, transformers), as they print
    it; by default they go to <run folder>/logs/ (a file per role), and the console shows the progress bar,
    oat_cpgd's warnings and a summary."""
    dry_run: bool = flag("saving_and_logging", False)
    """Print the resolved configuration and exit without starting anything."""

    def resolve(self) -> None:
        """Fill derived defaults in place, then check the flags agree; raise ConfigError naming them."""
        arg_checks.fill_defaults(self)
        self.check()

    def check(self) -> None:
        arg_checks.check_general(self)

    def run_kind(self) -> str:
        return "run"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)


@dataclass
class PPOArgs(Args):
    """PPO-family arguments: PPO (critic + GAE), GRPO and Dr. GRPO."""

    critic_type: str = flag("algorithm", "ppo")
    """The algorithm: {algorithms} (docs/ALGORITHMS.md; cpgd's own flags come with run_cpgd), or
    `my_module:NAME` for an Algorithm of your own (imported from the launch directory)."""
    num_ppo_epochs: int = flag("algorithm", 1)
    """Passes over each rollout's responses."""
    mini_train_batch_size_per_device: int = flag("algorithm", 1)
    """Micro-batch for forward passes without gradient (old and reference log-probs, values)."""
    packing: bool = flag("algorithm", False)
    """Cut each rank's responses into micro-batches by token count (--train_max_tokens_per_device,
    padding included) instead of --train_batch_size_per_device / --mini_train_batch_size_per_device
    responses: longest first, each into the first micro-batch it fits. Short responses then share a
    pass; the loss and its gradient do not depend on the cut (exact accumulation)."""
    train_max_tokens_per_device: int = flag("algorithm", 16384)
    """With --packing: the most tokens (prompt + response, padded to the micro-batch's longest) per
    forward/backward pass on one rank. At least --prompt_max_length + --generate_max_length."""
    logprob_chunk_tokens: int = flag("algorithm", 1024)
    """Response tokens whose vocabulary logits exist at once in the learner's log-prob passes (0: a
    micro-batch's all at once). The output layer runs on this many tokens at a time, and backward
    recomputes each chunk's logits rather than keeping them: memory for the logits stays at this
    many tokens x vocabulary, whatever the response length, for one more output-layer pass. (A model
    whose logits are transformed after the output layer, a soft cap say, computes all its response
    logits itself; only the log-softmax goes in chunks.)"""
    loss_agg_mode: AggMode | None = flag("algorithm", None)
    """How token losses are averaged; default: the algorithm's (token-mean for ppo and
    reinforce_pp_baseline, seq-mean-token-sum-norm for drgrpo, seq-mean-token-mean otherwise)."""
    clip_low: float | None = flag("algorithm", None)
    """Lower clip range epsilon_low of the ratio (1: no lower bound); default: the algorithm's, 0.2 (GSPO: 3e-4;
    CISPO: 1; GMPO: 0.4, of the log-ratio)."""
    clip_high: float | None = flag("algorithm", None)
    """Upper clip range epsilon_high; default: the algorithm's, 0.2 (GSPO: 4e-4; CISPO: 4; GMPO: 0.4, of the
    log-ratio); DAPO's clip-higher uses 0.28."""
    dual_clip: float | None = flag("algorithm", None)
    """Dual-clip constant for negative advantages (PPO-clip losses), e.g. 3.0."""
    is_correction: ISCorrection = flag("algorithm", "tis")
    """Importance correction for the gap between the actor's (behaviour) log-probs and the learner's
    (proximal) ones, w = exp(old_logp - actor_logp) per token: tis multiplies the token loss by
    min(w, --tis_c), mis by w but drops tokens with w > --tis_c, none by 1. With --top_p < 1 or
    --top_k, vLLM reports log-probs renormalised over the tokens it kept; the learner's side is
    then restricted to the same tokens, so w and train/logprob_gap_actor_learner compare like with like."""
    tis_c: float = flag("algorithm", 2.0)
    """C, the cap of the importance weights (oat's tis_c)."""
    kl_penalty_coef: float = flag("rewards_and_advantages", 0.0)
    """Reference-KL reward shaping, every algorithm: -coef x (old_logp - ref_logp) per token (PPO),
    or summed over the response and added to its reward before the group advantage; > 0 loads a reference model."""
    non_stop_penalty: float = flag("rewards_and_advantages", 0.0)
    """Added to the reward of responses truncated at --generate_max_length."""
    overlong_buffer_len: int = flag("rewards_and_advantages", 0)
    """DAPO's soft overlong punishment: responses longer than generate_max_length minus this many
    tokens lose up to --overlong_penalty_factor, linearly (0: off)."""
    overlong_penalty_factor: float = flag("rewards_and_advantages", 1.0)
    """The punishment at --generate_max_length tokens."""
    dynamic_sampling: bool = flag("rewards_and_advantages", False)
    """DAPO's dynamic sampling (group methods): drop groups whose oracle rewards are all equal and
    draw more prompts until the step has --rollout_batch_size informative groups."""
    dynamic_sampling_max_draws: int = flag("rewards_and_advantages", 4)
    """Most extra draws of --rollout_batch_size prompts per step; when reached, the step is filled
    up with uninformative groups (advantage 0), and train/informative_groups says how many were not."""
    reward_scale: float = flag("rewards_and_advantages", 1.0)
    """Multiplies each response's reward (oracle score plus the penalties above) before the advantage."""
    whiten_adv: bool = flag("rewards_and_advantages", False)
    """Whiten the advantages over all response tokens of the whole batch (all learner ranks), any algorithm."""
    gamma: float = flag("critic", 1.0)
    """Discount factor of GAE (PPO), in [0, 1]."""
    lam: float = flag("critic", 1.0)
    """GAE's lambda (PPO), in [0, 1]: 1 uses the full returns, 0 one-step temporal differences."""
    vf_coef: float = flag("critic", 1.0)
    """Weight of the critic's value loss (PPO)."""
    cliprange_value: float = flag("critic", 0.2)
    """The critic's new values are clipped to within this of the old ones in its loss (PPO)."""
    critic_learning_rate: float = flag("critic", 9e-6)
    """Peak learning rate of the critic (PPO), under the same schedule as the policy's."""
    critic_max_step_adjustment: float | None = flag("critic", None)
    """The critic's --max_step_adjustment: default (auto), its LR schedule ends with the run; given, it
    spans oat's count of optimizer steps times this."""

    def run_kind(self) -> str:
        return self.critic_type.rpartition(":")[2]  # `my_module:NAME` runs are NAME-...

    def resolve(self) -> None:
        arg_checks.fill_algorithm_defaults(self)
        super().resolve()

    def check(self) -> None:
        super().check()
        arg_checks.check_training(self)

    @property
    def agg_mode(self) -> str:
        return self.loss_agg_mode or get_algorithm(self.critic_type).agg_mode

    @property
    def needs_reference(self) -> bool:
        return get_algorithm(self.critic_type).needs_reference or self.beta > 0 or self.kl_penalty_coef > 0


@dataclass
class CPGDArgs(PPOArgs):
    """CPGD: clipped policy gradient with policy drift (arXiv 2505.12504)."""

    critic_type: str = flag("algorithm", "cpgd")
    policy_drift_coeff: float = flag("cpgd", 0.01)
    """alpha: weight of the policy-drift regulariser."""
    drift_clip: float = flag("cpgd", 2.0)
    """c_drift: the drift gradient's ratio term min(rho - 1, c_drift)."""
    cpgd_weight: Literal[tuple(CPGD_WEIGHTS)] = flag("cpgd", "std")
    """Per-prompt advantage weight omega: 1/std (std), min(c_w, G/G_nonzero) (clip_filter) or 1 (equal)."""
    clip_filter_max_weight: float = flag("cpgd", 3.0)
    """c_w, the cap of the clip_filter weight."""

    def check(self) -> None:
        super().check()
        arg_checks.check_cpgd(self)
