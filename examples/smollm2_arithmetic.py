"""A real pretrained model learns by RL on CPU: SmolLM2-135M-Instruct on two-digit sums, by CPGD.

    python examples/smollm2_arithmetic.py [--seed 0] [--out runs/smollm2] [-- run_cpgd flags]

The model is built offline (`python -m oat_cpgd.models.smollm2`). The task: "What is 47 + 38?
Answer with the number only." with both numbers of two digits (8,100 questions, 200 of them held
out), scored by the `gsm8k` oracle (the final number of the answer). Asked for a `\\boxed{}` answer
instead, the model reasons at length, never boxes within 48 tokens and gets no reward to learn
from. The flags are the DeepScaleR CPGD recipe's (examples/deepscaler_cpgd.sh) with the sizes made
to fit 2 CPU cores: one learner rank, no GPU features, 8 prompts x 4 samples per step, 16 new
tokens, and a learning rate raised for a 135M-parameter model over a few steps. Held-out accuracy (greedy) is evaluated at step 0 and at the
end; the run folder's curves.png shows it. Flags after `--` override these.
"""

import argparse
import sys
from pathlib import Path

from oat_cpgd.args import CPGDArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.experiment.demo import NUM_HELD_OUT, held_out_split, write_splits
from oat_cpgd.interface import run
from oat_cpgd.models.smollm2 import build_smollm2

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "smollm2_arithmetic"


def questions() -> list[dict]:
    return [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(10, 100) for b in range(10, 100)]


def flags(model: Path, data: Path, seed: int, steps: int, out: Path) -> list[str]:
    return [
        # The recipe's algorithm (examples/deepscaler_cpgd.sh).
        "--prompt_template={question} Answer with the number only.",
        "--apply-chat-template",
        "--oracle=gsm8k",
        "--policy_drift_coeff=0.001",
        "--cpgd_weight=std",
        "--clip_low=0.2",
        "--clip_high=0.2",
        "--max_norm=0.5",
        "--beta=0",
        "--lr_scheduler=constant",
        "--lr_warmup_ratio=0",
        "--adam_beta_2=0.999",
        "--l2=0.01",
        "--loss_agg_mode=token-mean",
        "--num_ppo_epochs=1",
        "--is_correction=none",
        # Sizes for 2 CPU cores and a 135M model.
        f"--pretrain={model}",
        "--gpus=1",
        f"--prompt_data={data}",
        "--train_split=train",
        "--eval_split=test",
        "--input_key=question",
        "--output_key=answer",
        "--num_samples=4",
        "--rollout_batch_size=8",
        "--rollout_batch_size_per_device=8",
        "--train_batch_size=32",
        "--train_batch_size_per_device=8",
        "--mini_train_batch_size_per_device=8",
        "--prompt_max_length=96",
        "--generate_max_length=16",
        "--eval_generate_max_length=16",
        "--learning_rate=1e-5",
        f"--max_steps={steps}",
        f"--eval_steps={steps}",
        f"--max_eval={NUM_HELD_OUT}",
        "--oracle_workers=1",
        f"--seed={seed}",
        f"--save_path={out}",
        f"--wb_run_name=smollm2-seed{seed}",
        "--save_steps=-1",
    ]


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "smollm2")
    options = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    model = build_smollm2(REPO / ".cache" / "test_models" / "smollm2")
    train, held_out = held_out_split(questions())  # 200 held out, as the demo
    data = write_splits(CACHE / "data", train, held_out)
    args = parse_args(CPGDArgs, argv=flags(model, data, options.seed, options.steps, options.out) + extra)
    print(f"run finished: {run(args)}")


if __name__ == "__main__":
    main()
