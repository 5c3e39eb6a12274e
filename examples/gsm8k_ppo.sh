#!/usr/bin/env bash
# oat's PPO on GSM8K (sail-sg/oat docs/reasoning_examples.md): rho-1b SFT model, 8 GPUs, about 6 hours on A100s.
#
#   bash examples/gsm8k_ppo.sh [FLAG ...]           the recipe; extra flags override it (e.g. --gpus 4)
#   SMOKE=1 bash examples/gsm8k_ppo.sh [FLAG ...]   the same command on a CPU: tiny local model, local data, 1 step
#
# Run from the repository root. The data is examples/data_preprocess/gsm8k.py's output (openai/gsm8k, or
# ../shared/data/gsm8k when SMOKE=1). oat's own command reads lkevinzc/gsm8k, whose train split holds the
# GSM8K test questions too; this one trains on train.jsonl and evaluates on the held-out test.jsonl.
source "$(dirname "$0")/recipe_lib.sh"

prepare_data gsm8k --input "$SHARED_DATA/gsm8k"

# oat's command, flag for flag, but for --prompt_data.
RECIPE=(
  --gpus 8 --collocate --gradient-checkpointing --flash-attn --bf16 --rnd-seed
  --learning_rate 0.000001 --critic_learning_rate 0.000001 --lr_scheduler polynomial
  --kl_penalty_coef 0 --num_ppo_epochs 2 --beta 0.0001 --non_stop_penalty 0
  --oracle_type reward --oracle gsm8k --pretrain lkevinzc/rho-1b-sft-GSM8K --apply-chat-template --zero-stage 2
  --prompt_data "$DATA_ROOT/gsm8k" --max-train 9999999 --num_prompt_epoch 6 --prompt_max_length 1000
  --sync_params_every 1 --num_samples 8 --max_step_adjustment 16 --critic_max_step_adjustment 16
  --temperature 1.2 --top_p 0.9 --generate_max_length 1024 --save_steps -1
  --input_key question --output_key final_answer --train_split train
  --train_batch_size 64 --train_batch_size_per_device 8 --mini_train_batch_size_per_device 8
  --rollout_batch_size 64 --rollout_batch_size_per_device 8 --pi_buffer_maxlen_per_device 64
  --max_eval 1500 --eval_batch_size 200 --eval_generate_max_length 1024 --eval_steps 50
  --eval_temperature 0.35 --eval_top_p 0.9 --eval_n 16 --eval_input_key question --eval_output_key final_answer
  --use-wb --wb-run-name rho-1b-ppo-gsm8k
)

SMOKE_FLAGS=()
if [ "$SMOKE" = 1 ]; then
  smoke_overrides
  SMOKE_FLAGS+=(--wb-run-name smoke-gsm8k-ppo)
fi

exec "$PYTHON" -m oat_cpgd.experiment.run_ppo "${RECIPE[@]}" "${SMOKE_FLAGS[@]}" "$@"
