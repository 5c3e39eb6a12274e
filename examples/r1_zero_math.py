"""R1-zero RL from a base model (oat's examples/r1_zero_math.py): a task's prompt template and oracle in one file.

    python examples/r1_zero_math.py --pretrain Qwen/Qwen2.5-Math-1.5B --prompt_data DIR --input_key problem ...
    python examples/r1_zero_math.py --critic_type grpo --oracle countdown --prompt_template countdown ...

A base model answers a question only inside a prompt that shows it how: this file registers
`qwen_math` (the Qwen2.5-Math chat prompt asking for a `\\boxed{}` answer, as oat's R1-zero
recipes use it) next to the built-in `r1_zero` (answer in `<answer>` tags), and the oracle
`r1_zero_math`, which reads the answer of either and checks it with math-verify. They are the
defaults here, with CPGD; `--critic_type` picks another algorithm and every flag still applies,
so oat's own R1-zero command (CountDown with `--oracle countdown`) runs unchanged.
"""

from typing import Any

from oat_cpgd.args import CPGDArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.data import PROMPT_TEMPLATES
from oat_cpgd.interface import main
from oat_cpgd.oracles import MathOracle, register_oracle
from oat_cpgd.oracles.countdown import last_answer
from oat_cpgd.oracles.math_boxed import equivalent, gold_answers, last_boxed

# Rendered in the launching process (prompts are built there), so registering here is enough.
PROMPT_TEMPLATES["qwen_math"] = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
    "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
)


@register_oracle("r1_zero_math")
class R1ZeroMathOracle(MathOracle):
    """1.0 when the answer equals the reference for math-verify; the answer is the last `<answer>...</answer>`
    (its `\\boxed{}` if it holds one) or, without tags, the last `\\boxed{}`. References as MathOracle's."""

    def reward(self, prompt: str, response: str, reference: Any) -> tuple[float, dict]:
        tagged = last_answer(response)
        answer = (last_boxed(tagged) or tagged) if tagged is not None else last_boxed(response)
        answer = answer or None  # an empty answer is no answer
        correct = answer is not None and any(equivalent(gold, answer) for gold in gold_answers(reference))
        return self.score(correct, answer is not None), {"answer": answer, "format_ok": answer is not None}


if __name__ == "__main__":
    main(parse_args(CPGDArgs, default=CPGDArgs(prompt_template="qwen_math", oracle="r1_zero_math")))
