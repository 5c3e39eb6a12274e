#!/usr/bin/env bash
# oat's R1-zero GRPO on CountDown (sail-sg/oat docs/reasoning_examples.md): Qwen2.5-3B base model, 8 GPUs,
# launched through examples/r1_zero_math.py as oat's is.
#
#   bash examples/countdown_r1_zero_grpo.sh [FLAG ...]           the recipe; extra flags override it
#   SMOKE=1 bash examples/countdown_r1_zero_grpo.sh [FLAG ...]   the same command on a CPU: tiny model, local data, 1 step
#
# Run from the repository root. The data is examples/data_preprocess/countdown.py's output: TinyZero's split of
# Jiayi-Pan/Countdown-Tasks-3to4 (327,680 train, 1,024 test rows), or with SMOKE=1 the local head of it
# (../shared/data/countdown, split 10,240 + 1,024). oat reads lkevinzc/CountDownZero, whose `input` column holds
# the rendered prompt; here `--prompt_template countdown` renders TinyZero's prompt from `nums` and `target`.
source "$(dirname "$0")/recipe_lib.sh"

prepare_data countdown --input "$SHARED_DATA/countdown/train_head.jsonl" --train_size 10240 --test_size 1024

# oat's command, flag for flag, but for the data flags (its lkevinzc/CountDownZero columns).
RECIPE=(
  --critic_type grpo --gpus 8 --vllm_gpu_ratio 0.7 --gradient-checkpointing --flash-attn --bf16 --rnd-seed
  --learning_rate 0.000001 --lr_warmup_ratio 0.0000001 --kl_penalty_coef 0 --num_ppo_epochs 1 --beta 0.001
  --non_stop_penalty 0 --oracle_type reward --oracle countdown --pretrain Qwen/Qwen2.5-3B --zero-stage 2
  --ref_offload --prompt_data "$DATA_ROOT/countdown" --train_split train
  --input_key nums --output_key target,nums --prompt_template countdown
  --max-train 9999999 --num_prompt_epoch 1 --prompt_max_length 256 --sync_params_every 1 --num_samples 8
  --max_step_adjustment 8 --critic_max_step_adjustment 8 --temperature 1.0 --top_p 0.9 --generate_max_length 1024
  --save_steps -1 --train_batch_size 128 --train_batch_size_per_device 2 --mini_train_batch_size_per_device 2
  --rollout_batch_size 128 --rollout_batch_size_per_device 32 --pi_buffer_maxlen_per_device 256
  --eval_batch_size 200 --eval_steps 8 --eval_temperature 0 --eval_generate_max_length 1024 --eval_split test
  --use-wb --wb-run-name qwen-2.5-3b-countdown-grpo
)

SMOKE_FLAGS=()
if [ "$SMOKE" = 1 ]; then
  smoke_overrides
  SMOKE_FLAGS+=(--wb-run-name smoke-countdown-r1-zero-grpo)
fi

exec "$PYTHON" examples/r1_zero_math.py "${RECIPE[@]}" "${SMOKE_FLAGS[@]}" "$@"
