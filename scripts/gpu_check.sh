#!/usr/bin/env bash
# The learner's CUDA checks on ONE GPU, without Ray or vLLM: scripts/gpu_check.py on one learner rank
# under torchrun (as tests/support/learner_worker.py runs learners), with the tiny model it builds itself:
# ZeRO-2 and ZeRO-3 in bf16 (the same learn, compared), the output layer in chunks under ZeRO-3's
# hooks, LoRA merged into the weights a sync sends, the recipes' offloads (optimizer states through
# DeepSpeed's compiled CPU Adam on CUDA, parameters, the reference) with gradient checkpointing, a
# checkpoint saved and loaded into a new learner, the ZeRO-3 load against the checkpoint on disk, and
# torch.cuda.max_memory_allocated per phase.
# Prints a short report (and writes $OUT/report.json); exits 1 if a check fails. About 2 minutes.
#
#   bash scripts/gpu_check.sh                  on CUDA where there is one, else the CPU
#   bash scripts/gpu_check.sh --cpu            on the CPU (the same checks; the report gives peak RSS)
#   bash scripts/gpu_check.sh --prepare-wheels fill $WHEELS (below), on a machine that reaches PyPI
#
# Not checked here: vLLM's packed NCCL sender over a one-rank group. It is vLLM's own trainer-side
# engine (vllm.distributed.weight_transfer), which imports with the vllm package; the GPU machine has
# no vllm, and it cannot be installed from a few MiB of wheels. So nothing of the weight transfer to
# the actors (NCCL or CUDA IPC) runs here; the weights a sync would send are gathered and checked.
#
# The wheels folder. The GPU machine has torch with CUDA, transformers 5, peft and accelerate, no
# network, and takes up to 64 MiB of wheels: `--prepare-wheels` puts in $WHEELS (default .whl/,
# ignored by git; the device runner carries it with `carry: [".whl"]`) what the learner imports beyond
# those, about 15 MiB:
# - deepspeed 0.19.8, a source archive on PyPI whose setup.py imports torch: built here into a
#   py3-none-any wheel (no compiled ops; the few the learner uses build at run time);
# - what deepspeed imports: hjson, ninja, py-cpuinfo, msgpack, einops, pydantic (with pydantic-core,
#   annotated-types, typing-inspection); numpy, packaging, psutil and tqdm come with torch,
#   transformers and accelerate;
# - what oat_cpgd.args imports: tyro (docstring-parser, typeguard), and through --oracle's check the
#   oracles: pebble, math-verify (latex2sympy2_extended, antlr4-python3-runtime; sympy comes with torch).
# msgpack and pydantic-core are compiled: their wheels are fetched for CPython 3.10 to 3.13.
# Found by installing these with `pip install --no-index --find-links` into a fresh environment of
# only torch, transformers 5.19, peft and accelerate, and running this script there on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-.cache/gpu_check}

prepare_wheels() {
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$WHEELS" deepspeed==0.19.8
  "$PYTHON" -m pip download --no-deps -d "$WHEELS" hjson==3.1.0 ninja==1.13.2 py-cpuinfo==9.0.0 einops==0.8.2 \
    pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 tyro==1.0.17 docstring-parser==0.18.0 \
    typeguard==4.6.1 pebble==5.2.3 math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
  for version in 3.10 3.11 3.12 3.13; do
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$version" \
      --platform manylinux2014_x86_64 -d "$WHEELS" msgpack==1.2.4 pydantic-core==2.50.5
  done
  du -sh "$WHEELS"
}

DEVICE_FLAG=()
case "${1:-}" in
  --prepare-wheels) prepare_wheels; exit 0 ;;
  --cpu) DEVICE_FLAG=(--cpu); export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu ;;
  "") ;;
  *) echo "usage: $0 [--cpu | --prepare-wheels]" >&2; exit 2 ;;
esac

"$PYTHON" -c "import torch, transformers, peft, accelerate
print('python', __import__('sys').version.split()[0], '| torch', torch.__version__, '| cuda', torch.cuda.is_available(),
      '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__)
assert int(transformers.__version__.split('.')[0]) >= 5, 'the learner needs transformers 5 (setup.py pins 5.19.0)'"
if ! "$PYTHON" -c "import deepspeed, tyro, pebble, math_verify" 2>/dev/null; then
  "$PYTHON" -m pip install --no-index --find-links "$WHEELS" deepspeed==0.19.8 tyro pebble math-verify
fi

mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
port=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
exec timeout 570 "$PYTHON" -m torch.distributed.run --nproc_per_node 1 --master_port "$port" \
  scripts/gpu_check.py --out "$OUT" "${DEVICE_FLAG[@]}"
