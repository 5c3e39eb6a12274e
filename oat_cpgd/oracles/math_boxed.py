"""Competition math (MATH, DeepScaleR, AIME, AMC): the last `\\boxed{}` answer, checked with math-verify."""

from __future__ import annotations

import logging
import re
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify

from oat_cpgd.oracles.base import Info, RewardOracle
from oat_cpgd.oracles.registry import register_oracle

BOXED = re.compile(r"\\(?:boxed|fbox)")
UNBRACED = re.compile(r"\s+([^\s$]*[^\s$.,])")  # `\boxed 5`, without a full stop after it

# math-verify warns once per process that its own timeouts are off: the worker pool enforces ours.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` (braces balanced), or of `\\boxed 5`."""
    commands = list(BOXED.finditer(text))
    if not commands:
        return None
    rest = text[commands[-1].end() :]
    if not rest.startswith("{"):
        unbraced = UNBRACED.match(rest)
        return unbraced.group(1) if unbraced else None
    depth = 0
    for i, char in enumerate(rest):
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return rest[1:i]
    return None  # unbalanced


def gold_answers(reference: Any) -> list[str]:
    """Acceptable answers as LaTeX: from a string, a number or a list of them.

    Integral floats lose their ".0" (AMC's 142.0 is 142); a full solution gives its last boxed answer.
    """
    if isinstance(reference, (list, tuple)):
        return [answer for item in reference for answer in gold_answers(item)]
    if isinstance(reference, float) and reference.is_integer():
        return [str(int(reference))]
    text = str(reference)
    return [last_boxed(text) or text]


def equivalent(gold: str, answer: str) -> bool:
    """Whether math-verify finds `answer` equal to `gold`; both are LaTeX without delimiters."""
    # LaTeX extraction only: math-verify's plain-expression parser goes through sympy's parse_expr.
    config = [LatexExtractionConfig()]
    gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=config, parsing_timeout=None)
    answer_parsed = parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=None)
    return verify(gold_parsed, answer_parsed, timeout_seconds=None)


@register_oracle("math")
@register_oracle("deepscaler")
class MathOracle(RewardOracle):
    """1.0 when the last boxed answer is equivalent to the reference (math-verify), else 0.0.

    The reference is LaTeX, a number, or a list of acceptable answers. A boxed but wrong
    answer scores `format_reward`, by default 0.0 because a format bonus invites reward hacking.
    """

    def reward(self, prompt: str, response: str, reference: Any) -> tuple[float, Info]:
        answer = last_boxed(response) or None  # an empty box is no answer
        correct = answer is not None and any(equivalent(gold, answer) for gold in gold_answers(reference))
        return self.score(correct, answer is not None), {"answer": answer, "format_ok": answer is not None}
