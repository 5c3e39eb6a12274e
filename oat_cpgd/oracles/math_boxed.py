"""Competition math (MATH, DeepScaleR, AIME, AMC): the last `\\boxed{}` answer, checked with math-verify.

math-verify decides most answers; the oracle decides where math-verify is blind: a gold in `\\text{}`
(compared as text), a number in another base (`40_9`: the base must match), a gold written as a
calculation (`2 + 2 = 4`: its value) and decimals (compared relatively, where math-verify rounds to
six places, so that it finds `.0000672` equal to `.0000673`).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from math_verify.utils import timeout
from sympy import And, Basic, Eq, Expr, Float, N, UnevaluatedExpr

from oat_cpgd.oracles.base import Info, RewardOracle
from oat_cpgd.oracles.registry import register_oracle

BOXED = re.compile(r"\\(?:boxed|fbox)")
UNBRACED = re.compile(r"\s+([^\s$]*[^\s$.,])")  # `\boxed 5`, without a full stop after it
TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}")
LATEX_SPACE = re.compile(r"\s|\$|~|\\[ ,;:!]")
# Digits (one at least, so that `F_{16}` stays a symbol) and a base: `40_9`, `A5_11`. The lookahead
# scans the digits once; `[0-9A-Z]*[0-9][0-9A-Z]*` would take quadratic time on a long number.
BASE_NUMBER = re.compile(r"(-?)((?=[A-Z]*[0-9])[0-9A-Z]+)_(\d+)")
DECIMAL_TOLERANCE = 5e-6
"""Half a unit in the sixth significant digit, at most: a decimal rounded to six digits is still right."""

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
    """Whether `answer` equals `gold`; both are LaTeX without delimiters.

    The oracle's own rules first (`text_verdict`, `value_verdict`), math-verify for the rest.
    `timeout_s`: a time limit on each step (math-verify's, signal-based, so in the main thread
    only, and blind to long C calls such as huge powers); None in the oracle's workers, whose
    pool enforces the limit.
    """
    verdict = text_verdict(gold, answer)
    if verdict is not None:
        return verdict
    # LaTeX extraction only: math-verify's plain-expression parser goes through sympy's parse_expr.
    config = [LatexExtractionConfig()]
    gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=config, parsing_timeout=timeout_s)
    answer_parsed = parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=timeout_s)
    if gold_parsed and answer_parsed:  # each a sympy expression, then the text it came from
        verdict = value_verdict(gold_parsed[0], answer_parsed[0], timeout_s)
    return verify(gold_parsed, answer_parsed, timeout_seconds=timeout_s) if verdict is None else verdict


def text_verdict(gold: str, answer: str) -> bool | None:
    """The verdict on answers the oracle reads as text, or None to leave to math-verify.

    A gold all in `\\text{}` is words or options (`\\text{B,C}`): the answer must be the same text.
    A number with a base (`40_9`) must match in base and value; an answer with no base is read in the
    gold's, which the question asked for. An answer in a base other than 10 never equals a plain gold.
    """
    if TEXT_COMMAND.fullmatch(gold.strip(" $")):
        return plain_text(answer) == plain_text(gold)
    gold_number = base_number(gold)
    if gold_number is not None:
        return gold_number == (base_number(answer) or base_number(f"{{{answer}}}_{gold_number[1]}"))
    answer_number = base_number(answer)
    return False if answer_number is not None and answer_number[1] != 10 else None


def plain_text(latex: str) -> str:
    """Text to compare, without text commands, spaces, case or a final full stop: `\\text{(B) }` -> `b`.

    One option in parentheses loses them: `(B)` is `B`.
    """
    text = LATEX_SPACE.sub("", TEXT_COMMAND.sub(r"\1", latex)).lower().removesuffix(".")
    option = re.fullmatch(r"\((\w)\)", text)
    return option.group(1) if option else text


def base_number(latex: str) -> tuple[int, int] | None:
    """(value, base) of a number written with its base: `40_9`, `40_{9}`, `(40)_9`, `\\text{A5}_{11}`, `1011_{(2)}`.

    None for anything else, such as a base below 2 or above 36, or a digit the base does not have.
    """
    text = LATEX_SPACE.sub("", TEXT_COMMAND.sub(r"\1", latex)).removesuffix(".")
    match = BASE_NUMBER.fullmatch(re.sub(r"[{}()]", "", text))
    if not match or not 2 <= int(match.group(3)) <= 36:
        return None
    sign, digits, base = match.groups()
    try:
        value = int(digits, int(base))
    except ValueError:  # a digit the base does not have, or more digits than Python converts
        return None
    return -value if sign else value, int(base)


def value_verdict(gold: Any, answer: Any, timeout_s: int | None) -> bool | None:
    """The verdict on parsed answers the oracle decides, or None to leave to math-verify.

    A calculation (`2 + 2 = 4`, no variables) stands for its value: math-verify solves such an
    equation for no unknowns and finds any two equal. A gold calculation's value is its right-hand
    side; an answer that is a calculation must hold, each side equal to the gold's value.
    Decimals compare with a relative tolerance (`close_decimals`).
    """
    if not (isinstance(gold, Basic) and isinstance(answer, Basic)):  # text, or a matrix
        return None
    gold_sides, answer_sides = calculation_sides(gold), calculation_sides(answer)
    if gold_sides is None and answer_sides is None:
        return close_decimals(gold, answer, timeout_s)
    value = gold_sides[-1] if gold_sides else gold
    return all(same_value(value, side, timeout_s) for side in answer_sides or [answer])


def calculation_sides(expr: Basic) -> list[Basic] | None:
    """The sides of an equation between numbers, or of a chain of them (`2 + 2 = 4`); else None."""
    equations = expr.args if isinstance(expr, And) else (expr,)
    if not all(isinstance(equation, Eq) for equation in equations):
        return None
    sides = [side for equation in equations for side in equation.args]
    return sides if all(side.is_number for side in sides) else None  # not `x = 5`, nor `f(1) = 0`


def same_value(gold: Basic, answer: Basic, timeout_s: int | None) -> bool:
    """Equal values: decimals by `close_decimals`, anything else by math-verify."""
    close = close_decimals(gold, answer, timeout_s)
    return verify(gold, answer, timeout_seconds=timeout_s) if close is None else close


def close_decimals(gold: Basic, answer: Basic, timeout_s: int | None) -> bool | None:
    """Whether two real numbers, one with a decimal point, agree to six significant digits; None for others.

    Within `DECIMAL_TOLERANCE` of the larger, so that `.0000673` is not `.0000672` (math-verify rounds
    both to six places); from 0.1 up, to six decimal places as math-verify has it, so that a decimal
    near a large number is not taken for it. A timeout (in the main thread) counts as unequal.
    """
    if not (gold.atoms(Float) or answer.atoms(Float)):
        return None
    try:
        values = timeout(timeout_seconds=timeout_s)(real_values)(gold, answer)
    except TimeoutException:
        return False
    if values is None:
        return None
    a, b = values
    return bool(abs(a - b) <= DECIMAL_TOLERANCE * min(max(abs(a), abs(b)), 0.1))


def real_values(*exprs: Basic) -> list[Float] | None:
    """Each expression's value to 30 digits (`56\\%` is 0.56), or None unless all are finite real numbers."""
    # A percentage is `56 * UnevaluatedExpr(1/100)`, which N leaves as it is: unwrap it (doit would also
    # work out 9^{9^{9}} exactly, where N takes a moment).
    values = [
        N(expr.replace(UnevaluatedExpr, lambda inner: inner), 30) if isinstance(expr, Expr) and expr.is_number else None
        for expr in exprs
    ]
    return values if all(isinstance(value, Float) and value.is_finite for value in values) else None


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
