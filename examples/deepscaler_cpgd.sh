#!/usr/bin/env bash
# CPGD on DeepScaleR as siiRL documents it ("DeepScaleR Example with CPGD", examples/cpgd_trainer/
# run_qwen2_5-7b.sh): Qwen2.5-7B-Instruct, one node of 8 GPUs. docs/RECIPES.md maps each siiRL key to its flag.
#
#   bash examples/deepscaler_cpgd.sh [FLAG ...]           the recipe; extra flags override it
#   SMOKE=1 bash examples/deepscaler_cpgd.sh [FLAG ...]   the same command on a CPU: tiny model, local data, 1 step
#
# Run from the repository root. The data is examples/data_preprocess/deepscaler.py's output: siiRL's 90/10
# split of agentica-org/DeepScaleR-Preview-Dataset, or with SMOKE=1 of ../shared/data/deepscaler's partial copy.
source "$(dirname "$0")/recipe_lib.sh"

prepare_data deepscaler --input "$SHARED_DATA/deepscaler/train_partial.jsonl.gz"

# siiRL's keys, translated; its defaults that differ from ours are spelled out (second block).
RECIPE=(
  --pretrain Qwen/Qwen2.5-7B-Instruct --gpus 8 --collocate --zero-stage 3 --bf16 --flash-attn --gradient-checkpointing
  --prompt_data "$DATA_ROOT/deepscaler" --train_split train --eval_split test --input_key problem --output_key answer
  --prompt_template "{problem} Let's think step by step and output the final within \\boxed{{}}." --apply-chat-template
  --oracle math --rollout_batch_size 512 --num_samples 8 --prompt_max_length 2048
  --generate_max_length 4096 --eval_generate_max_length 4096 --max_model_len 8192
  --learning_rate 1e-6 --policy_drift_coeff 0.001 --cpgd_weight std --clip_low 0.2 --clip_high 0.2 --max_norm 0.5
  --train_batch_size 2048 --train_batch_size_per_device 8 --mini_train_batch_size_per_device 8 --beta 0
  --vllm_tensor_parallel_size 2 --vllm_gpu_ratio 0.6 --ref_offload
  --num_prompt_epoch 30 --save_steps 30 --eval_steps 10 --max_save_num 5
  --use-tb --use-wb --wb_project siirl_deepscaler_cpgd --wb-run-name qwen2.5-7b-cpgd-deepscaler
  # siiRL's (verl's) defaults: constant LR without warm-up, AdamW (0.9, 0.999) with weight decay 0.01,
  # token-mean loss, one PPO epoch, no importance correction between vLLM's and the learner's log-probs.
  --lr_scheduler constant --lr_warmup_ratio 0 --adam_beta_2 0.999 --l2 0.01 --loss_agg_mode token-mean
  --num_ppo_epochs 1 --is_correction none --max_train 9999999 --max_eval 9999999
)

SMOKE_FLAGS=()
if [ "$SMOKE" = 1 ]; then
  smoke_overrides
  SMOKE_FLAGS+=(--wb-run-name smoke-deepscaler-cpgd)
fi

exec "$PYTHON" -m oat_cpgd.experiment.run_cpgd "${RECIPE[@]}" "${SMOKE_FLAGS[@]}" "$@"
