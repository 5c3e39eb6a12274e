"""Competition math (MATH, DeepScaleR, AIME, AMC): the last `\\boxed{}` answer, checked with math-verify."""

from __future__ import annotations

import logging
import math
import re
import threading
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


def equivalent(gold: str, answer: str, timeout_s: int | None = None) -> bool:
    """Whether math-verify finds `answer` equal to `gold`; both are LaTeX without delimiters.

    `timeout_s`: math-verify's own time limit on each step (signal-based, so in the main thread
    only, and blind to long C calls such as huge powers); None in the oracle's workers, whose
    pool enforces the limit.
    """
    # LaTeX extraction only: math-verify's plain-expression parser goes through sympy's parse_expr.
    config = [LatexExtractionConfig()]
    gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=config, parsing_timeout=timeout_s)
    answer_parsed = parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=timeout_s)
    return verify(gold_parsed, answer_parsed, timeout_seconds=timeout_s)


def balanced_braces(text: str) -> bool:
    """Whether every `{` in `text` is closed, and no `}` closes what was not opened."""
    depth = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        if depth < 0:
            return False
    return depth == 0


def usable_gold(reference: Any) -> bool:
    """A reference `equivalent` can match: a string or finite number (not None, a bool or NaN) whose
    answer is non-blank LaTeX with balanced braces (`\\boxed{...}` wraps it), or a list with one such."""
    if isinstance(reference, (list, tuple)):
        return any(usable_gold(item) for item in reference)
    if isinstance(reference, bool) or not isinstance(reference, (str, int, float)):
        return False
    if isinstance(reference, float) and not math.isfinite(reference):
        return False
    return all(answer.strip(" \t\n$") and balanced_braces(answer) for answer in gold_answers(reference))


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

    def check_reference(self, reference: Any) -> bool:
        """See `usable_gold`; math-verify itself is not run (about 4 ms a row: minutes on a large set)."""
        return usable_gold(reference)

    def same_answer(self, a: str, b: str) -> bool:
        """Equivalent for math-verify (`0.5`, `\\frac12` and `1/2` are one answer), in both directions.

        For the driver's maj@n: math-verify's own time limits (our `timeout_s`, in whole seconds)
        in the main thread, none elsewhere; an error in math-verify counts as different answers.
        """
        a, b = a.strip(), b.strip()
        if a == b:
            return True
        if not (a and b):
            return False
        on_main_thread = threading.current_thread() is threading.main_thread()
        limit = max(1, math.ceil(self.timeout_s)) if self.timeout_s and on_main_thread else None
        try:
            return bool(equivalent(a, b, limit) and equivalent(b, a, limit))
        except Exception:
            return False
