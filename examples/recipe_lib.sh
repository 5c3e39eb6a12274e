# Sourced by the five recipe scripts (examples/*.sh): the checks, data preparation and SMOKE=1's shared overrides.
set -euo pipefail

if [ ! -f oat_cpgd/__init__.py ]; then
  echo "$0: run from the repository root (oracles and examples import from there)" >&2
  exit 2
fi
# The interpreter: $PYTHON if given, else the repository's .venv (what `make install` creates; its bin/
# goes first on PATH, as `source .venv/bin/activate` would put it), else `python` from PATH.
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then
    PYTHON=$PWD/.venv/bin/python
    export PATH="$PWD/.venv/bin:$PATH"
  else
    PYTHON=python
  fi
fi
SMOKE=${SMOKE:-0}
# Real runs prepare the hub datasets under DATA_ROOT (verl's convention: ~/data/NAME); smoke runs
# prepare the local copies in SHARED_DATA into the work tree's cache.
if [ "$SMOKE" = 1 ]; then
  DATA_ROOT=${DATA_ROOT:-.cache/recipes/data}
else
  DATA_ROOT=${DATA_ROOT:-$HOME/data}
fi
SHARED_DATA=${SHARED_DATA:-../shared/data}

# prepare_data NAME [SMOKE_ARGS...]: examples/data_preprocess/NAME.py into $DATA_ROOT/NAME unless its
# train and test files are there (each file is written aside and renamed, so one that exists is complete).
# A real run reads the hub dataset; SMOKE=1 passes SMOKE_ARGS, which name the local copy in $SHARED_DATA.
prepare_data() {
  local name=$1
  shift
  if [ "$SMOKE" != 1 ]; then
    set --
  fi
  if [ ! -f "$DATA_ROOT/$name/train.jsonl" ] || [ ! -f "$DATA_ROOT/$name/test.jsonl" ]; then
    "$PYTHON" "examples/data_preprocess/$name.py" --local_dir "$DATA_ROOT/$name" "$@"
  fi
}

# SMOKE=1 overrides every recipe shares: the tiny local model (built once, cached), one learner rank
# without GPU features or wandb, two prompts of two short responses, and a single learning step.
# A recipe appends its own (data, sizes its constraints need) after these.
TINY_MODEL=.cache/recipes/tiny
smoke_overrides() {
  "$PYTHON" -m oat_cpgd.models.tiny --out "$TINY_MODEL" >&2
  SMOKE_FLAGS=(
    --pretrain "$TINY_MODEL" --gpus 1 --no-collocate --no-bf16 --no-flash-attn --no-use-wb
    --max_steps 1 --max_train 8 --max_eval 2 --eval_n 1 --eval_batch_size 2
    --num_samples 2 --rollout_batch_size 2 --rollout_batch_size_per_device 2
    --train_batch_size 4 --train_batch_size_per_device 2 --mini_train_batch_size_per_device 2
    --pi_buffer_maxlen_per_device -1 --prompt_max_length 256 --generate_max_length 8 --eval_generate_max_length 8
    --max_model_len 264 --vllm_tensor_parallel_size 1
  )
}
