#!/usr/bin/env bash
# Multi-turn GRPO on GSM8K with a Python interpreter as the tool (`--env python`), at the scale of verl's
# GSM8K multi-turn recipe: examples/sglang_multiturn/run_qwen2.5-3b_gsm8k_multiturn.sh with its config
# examples/sglang_multiturn/config/gsm8k_multiturn_grpo.yaml (volcengine/verl b178a3c): Qwen2.5-3B-Instruct,
# one node of 8 GPUs, up to 5 model turns in 1024 response tokens. verl's GSM8K tool (calc_gsm8k_reward)
# reports the reward of a proposed answer; here the tool is ReTool's code interpreter instead (verl
# recipe/retool/sandbox_fusion_tool_config.yaml and retool.py, at 9886706, before the recipes moved to
# volcengine/verl-recipe): code in a ```python block, run in a sandbox with a 30 s limit, the answer in \boxed{}.
# docs/RECIPES.md maps each key to its flag and names the settings that have none.
#
#   bash examples/gsm8k_python_tool_grpo.sh [FLAG ...]           the recipe; extra flags override it
#   SMOKE=1 bash examples/gsm8k_python_tool_grpo.sh [FLAG ...]   the same command on a CPU: tiny model, local data, 1 step
#
# Run from the repository root, as root: the sandbox needs Linux namespaces (the run refuses to start with the
# reason otherwise). The data is examples/data_preprocess/gsm8k.py's output (openai/gsm8k, or ../shared/data/gsm8k
# when SMOKE=1), as verl's gsm8k preprocessing splits it: train 7,473, test 1,319.
source "$(dirname "$0")/recipe_lib.sh"

prepare_data gsm8k --input "$SHARED_DATA/gsm8k"

# verl's keys, translated; its defaults that differ from ours are spelled out (second block).
RECIPE=(
  --pretrain Qwen/Qwen2.5-3B-Instruct --critic_type grpo
  --gpus 8 --collocate --zero-stage 3 --bf16 --flash-attn --gradient-checkpointing
  --prompt_data "$DATA_ROOT/gsm8k" --train_split train --eval_split test --input_key question --output_key final_answer
  --prompt_template python_tool --apply-chat-template --oracle gsm8k
  --env python --max_turns 5 --max_episode_tokens 1024 --tool_timeout 30 --oracle_timeout 40 --oracle_workers 16
  --rollout_batch_size 256 --num_samples 16 --prompt_max_length 1024
  --generate_max_length 1024 --eval_generate_max_length 1024 --max_model_len 2048
  --learning_rate 1e-6 --beta 0.001 --clip_low 0.2 --clip_high 0.2
  --train_batch_size 4096 --train_batch_size_per_device 32 --mini_train_batch_size_per_device 32
  --vllm_tensor_parallel_size 1 --vllm_gpu_ratio 0.85 --ref_offload
  --num_prompt_epoch 15 --save_steps -1 --eval_steps 20
  --use-wb --wb_project multi-turn-grpo-qwen2.5-3b-sglang --wb-run-name qwen2.5-3b-gsm8k-python-tool-grpo
  # verl's defaults: constant LR without warm-up, AdamW (0.9, 0.999) with weight decay 0.01, token-mean loss,
  # dual clip at 3, one PPO epoch, no importance correction, sampling at temperature 1, greedy validation.
  --lr_scheduler constant --lr_warmup_ratio 0 --adam_beta_2 0.999 --l2 0.01 --loss_agg_mode token-mean
  --dual_clip 3 --num_ppo_epochs 1 --is_correction none --temperature 1.0 --top_p 1.0 --eval_temperature 0
  --max_train 9999999 --max_eval 9999999
)

SMOKE_FLAGS=()
if [ "$SMOKE" = 1 ]; then
  smoke_overrides
  # Episodes of 16 tokens at most (8 a model turn, the tool's output included), and the context to hold them.
  SMOKE_FLAGS+=(--max_episode_tokens 16 --max_model_len 272 --oracle_workers 2 --wb-run-name smoke-gsm8k-python-tool-grpo)
fi

exec "$PYTHON" -m oat_cpgd.experiment.run_grpo "${RECIPE[@]}" "${SMOKE_FLAGS[@]}" "$@"
