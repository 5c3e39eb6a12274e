"""The learner's CUDA paths on one device, without Ray or vLLM: run by scripts/gpu_check.sh (see there).

    python -m torch.distributed.run --nproc_per_node 1 scripts/gpu_check.py --out DIR [--cpu]

One learner rank, as tests/support/learner_worker.py runs learners under torchrun, on its fixed trajectories
(4 prompts x 4 random responses) and the tiny model: ZeRO-2 and ZeRO-3 in bf16 (the same learn,
compared), the output layer in chunks under ZeRO-3, LoRA merged for the sync, the recipes' offloads
(optimizer, parameters, reference) with gradient checkpointing, a checkpoint saved and loaded into a new
learner, the ZeRO-3 load against the checkpoint on disk, and the device memory peak of each phase (host
peak RSS on CPU). Prints a short report; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.learner_worker import CHUNKED, ONE_STEP, loaded_weights, make_args, make_trajectories, token_logprobs  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from oat_cpgd.learners import Learner  # noqa: E402
from oat_cpgd.learners.schedule import ScheduleSteps  # noqa: E402
from oat_cpgd.models.tiny import build_tiny_model  # noqa: E402
from oat_cpgd.placement import Placement  # noqa: E402

GROUP_REWARDS = ((1.0, 0.0, 1.0, 0.0),)
BF16 = {"bf16": True, **ONE_STEP}
SCENARIOS = {
    "zero2_bf16": {"critic_type": "grpo", "zero_stage": 2, **BF16},
    "zero3_bf16": {"critic_type": "grpo", "zero_stage": 3, **BF16},
    "zero3_bf16_chunked": {"critic_type": "grpo", "zero_stage": 3, **BF16, **CHUNKED},
    "lora_zero3_bf16": {
        "critic_type": "grpo", "zero_stage": 3, "lora_rank": 4, "lora_alpha": 8, "learning_rate": 5e-3, **BF16
    },
    # The 7B recipes' memory savers: on CUDA, DeepSpeed's compiled CPU Adam on pinned host memory, parameters
    # paged from the host, and an offloaded ZeRO-3 reference (beta > 0; its KL gradient is zero at the first
    # step, so the learn is zero2_bf16's).
    "zero3_bf16_offload": {
        "critic_type": "grpo", "zero_stage": 3, **BF16, "adam_offload": True, "param_offload": True,
        "gradient_checkpointing": True, "beta": 0.01, "ref_offload": True,
    },
}  # fmt: skip
COMPARED_WITH_ZERO2 = ("zero3_bf16", "zero3_bf16_chunked", "zero3_bf16_offload")


class Peaks:
    """A scenario's memory peak in each phase, above what the process held when the scenario began: torch's
    allocated device memory on CUDA, else the process's RSS (peak: VmHWM, reset through /proc/self/clear_refs).
    `left` is what the scenario still holds once its learners are deleted: on the H200 each ZeRO-3 learner
    left about 1 GiB allocated, so peaks measured from zero would grow with every scenario before them."""

    def __init__(self, on_cuda: bool) -> None:
        self.on_cuda, self.mib = on_cuda, {}
        self.base = self.held()

    def held(self) -> int:
        if self.on_cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return self.status_bytes("VmRSS")

    @staticmethod
    def status_bytes(field: str) -> int:
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

    def record(self, name: str, held: int) -> None:
        self.mib[name] = round((held - self.base) / 2**20, 1)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")
        yield
        if self.on_cuda:
            torch.cuda.synchronize()
        self.record(name, torch.cuda.max_memory_allocated() if self.on_cuda else self.status_bytes("VmHWM"))

    def left(self) -> None:
        gc.collect()
        self.record("left", self.held())


def response_logprobs(learner: Learner, trajectories) -> list[float]:
    return [float(logp.sum()) for logp in learner.response_logprobs(trajectories)]


def run_scenario(name: str, model: Path, trajectories, out: Path, on_cuda: bool) -> dict:
    flags = SCENARIOS[name]
    args, placement = make_args(str(model), 1, flags), Placement.learners_alone(1, on_cuda)
    peaks = Peaks(on_cuda)
    with peaks.phase("init"):
        learner = Learner(args, placement, 0, schedule_steps=ScheduleSteps(10, 10))
    result: dict = {"rewards": [t.reward for t in trajectories]}
    if flags["zero_stage"] == 3:
        result["loaded"] = loaded_weights(learner, str(model))
    result["logp_before"] = response_logprobs(learner, trajectories)
    with peaks.phase("learn"):
        result["metrics"] = learner.learn(trajectories)
    result["logp_after"] = response_logprobs(learner, trajectories)
    with peaks.phase("sync_gather"):  # what a weight sync iterates, copied off the device
        state = {name: tensor.to("cpu", copy=True) for name, tensor in learner.weights()}
    checkpoint = out / f"{name}_checkpoint"
    with peaks.phase("save_checkpoint"):
        learner.save_checkpoint(checkpoint)
    del learner
    gc.collect()
    restored = Learner(args, placement, 0, schedule_steps=ScheduleSteps(10, 10))
    with peaks.phase("load_checkpoint"):
        restored.load_checkpoint(checkpoint)
    result["restored_equal"] = all(torch.equal(tensor.cpu(), state[name]) for name, tensor in restored.weights())
    result["logp_restored"] = response_logprobs(restored, trajectories)
    if flags.get("lora_rank", 0) > 0:
        result["trained"] = [n for n, p in restored.policy.module.named_parameters() if p.requires_grad]
        merged = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
        merged.load_state_dict(state)
        with torch.no_grad():
            result["merged_logp_after"] = [float(token_logprobs(merged, t).sum()) for t in trajectories]
    del restored
    peaks.left()
    result["peak_MiB"] = peaks.mib
    return result


def relative_gap(run: dict, other: list[float]) -> float:
    """The largest gap between `other` and `run`'s log-probs after learning, as a share of how far the
    learn moved that response: bf16 rounding differs between equivalent paths, a wrong one moves differently."""
    return max(
        abs(mine - theirs) / abs(mine - before)
        for before, mine, theirs in zip(run["logp_before"], run["logp_after"], other, strict=True)
    )


def checks(results: dict, n_weights: int) -> list[tuple[str, bool, str]]:
    """(check, passed, detail)."""
    out = []
    for name, run in results.items():
        if "error" in run:
            out.append((f"{name}: runs", False, run["error"]))
            continue
        metrics = run["metrics"]
        moved = [
            (after > before) == (reward > 0)
            for reward, before, after in zip(run["rewards"], run["logp_before"], run["logp_after"], strict=True)
        ]
        out.append((f"{name}: learn moves log-probs with the advantage", all(moved), f"{sum(moved)}/{len(moved)}"))
        finite = all(math.isfinite(v) for v in metrics.values())
        out.append((f"{name}: metrics finite", finite, f"grad_norm {metrics['train/grad_norm']:.4g}"))
        out.append((f"{name}: checkpoint reloads the same weights", run["restored_equal"], ""))
        gap = max(abs(a - b) for a, b in zip(run["logp_after"], run["logp_restored"], strict=True))
        out.append((f"{name}: the reloaded learner's log-probs", gap < 1e-3, f"max gap {gap:.3g}"))
        if "loaded" in run:
            policy = run["loaded"]["policy"]
            exact = policy["compared"] == n_weights and not policy["differing"] and not policy["new"]
            out.append((f"{name}: ZeRO-3 load equals the checkpoint (bf16)", exact, json.dumps(policy)[:120]))
    ran = {name: run for name, run in results.items() if "error" not in run}
    zero2, lora = ran.get("zero2_bf16"), ran.get("lora_zero3_bf16")
    for name in COMPARED_WITH_ZERO2 if zero2 else ():
        if name not in ran:
            continue
        other = ran[name]
        share = relative_gap(zero2, other["logp_after"])
        rel = abs(other["metrics"]["train/grad_norm"] / zero2["metrics"]["train/grad_norm"] - 1)
        out.append((f"{name} vs zero2_bf16: log-probs after learn", share < 0.1, f"{share:.3g} of the move"))
        out.append((f"{name} vs zero2_bf16: grad norm", rel < 2e-2, f"relative gap {rel:.3g}"))
    if lora is None:
        return out
    adapter_only = all(".lora_A." in n or ".lora_B." in n for n in lora["trained"])
    out.append(("lora_zero3_bf16: only the adapter trains", adapter_only, f"{len(lora['trained'])} tensors"))
    # The merged weights are rounded to bf16 after adding the small update: a share of it is lost.
    share = relative_gap(lora, lora["merged_logp_after"])
    out.append(
        ("lora_zero3_bf16: merged sync weights give the learner's log-probs", share < 0.25, f"{share:.3g} of the move")
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="scratch folder: the model, checkpoints, report.json")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available")
    cli = parser.parse_args()
    on_cuda = torch.cuda.is_available() and not cli.cpu
    start = time.time()
    model = build_tiny_model(cli.out / "tiny")
    plain = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trajectories = make_trajectories(plain, plain.config.vocab_size, GROUP_REWARDS)
    n_weights = len(dict(plain.named_parameters()))
    del plain
    results = {}
    for name in SCENARIOS:
        try:
            results[name] = run_scenario(name, model, trajectories, cli.out, on_cuda)
        except Exception as error:  # one path failing (an op that does not build) must not hide the others' checks
            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
        print(f"{name}: done ({time.time() - start:.0f} s)", flush=True)
    report = checks(results, n_weights)
    (cli.out / "report.json").write_text(json.dumps({"results": results, "checks": report}, indent=2))
    device = torch.cuda.get_device_name() if on_cuda else "CPU"
    print(f"\n== learner checks on {device}, torch {torch.__version__}, {time.time() - start:.0f} s")
    for check, passed, detail in report:
        print(f"{'PASS' if passed else 'FAIL'}  {check}  {detail}")
    unit = "torch.cuda.max_memory_allocated" if on_cuda else "peak RSS (VmHWM)"
    print(f"\n== memory peak per phase, MiB above the scenario's start ({unit}); left: held after its learners")
    for name, run in results.items():
        if "peak_MiB" in run:
            print(f"{name:20s} " + "  ".join(f"{phase} {mib}" for phase, mib in run["peak_MiB"].items()))
    sys.exit(0 if all(passed for _, passed, _ in report) else 1)


if __name__ == "__main__":
    main()
