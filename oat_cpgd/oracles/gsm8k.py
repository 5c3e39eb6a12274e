"""GSM8K: the final number of the response equals the reference's."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from oat_cpgd.oracles.base import Info, RewardOracle
from oat_cpgd.oracles.registry import register_oracle

# Thousands separators only in groups of three, so that "1,2,3" is three numbers;
# a minus right after a digit or ")" is a subtraction, not a sign.
NUMBER = r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
# Explicit ways to state the answer, most explicit first; units and "$" may surround the number.
MARKED_ANSWERS = [
    re.compile(rf"####[^\d\n-]{{0,10}}?({NUMBER})"),
    re.compile(rf"\\boxed\{{[^{{}}\d-]{{0,20}}?({NUMBER})"),
    re.compile(rf"answer is[^\d\n-]{{0,20}}?({NUMBER})", re.IGNORECASE),
]


def extract_answer(text: str) -> tuple[str | None, bool]:
    """The final number in `text` without separators, and whether an answer marker stated it.

    Markers are `#### N`, `\\boxed{N}` and "the answer is N"; without one, the last number counts.
    """
    for pattern in MARKED_ANSWERS:
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1]), True
    numbers = re.findall(NUMBER, text)
    return (normalize_number(numbers[-1]) if numbers else None), False


def normalize_number(number: str) -> str:
    """`1,080.50` -> `1080.5`, `72.0` -> `72`."""
    number = number.replace(",", "")
    return number.rstrip("0").rstrip(".") if "." in number else number


def same_number(a: str, b: str) -> bool:
    """Numeric equality of two normalized numbers; too many digits to convert compares unequal."""
    try:
        return Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):  # Python refuses int conversions of more than 4,300 digits
        return False


@register_oracle("gsm8k")
class GSM8KOracle(RewardOracle):
    """1.0 when the response's final number equals the reference's, else 0.0.

    The reference is a number or a full GSM8K solution ending in `#### N`. `format_ok`
    means the response marked its answer (`#### N`, `\\boxed{N}`, "the answer is N").
    """

    def reward(self, prompt: str, response: str, reference: Any) -> tuple[float, Info]:
        answer, format_ok = extract_answer(response)
        gold, _ = extract_answer(str(reference))
        if gold is None:
            raise ValueError(f"No number in the reference {reference!r}")
        correct = answer is not None and same_number(answer, gold)
        return self.score(correct, format_ok), {"answer": answer, "format_ok": format_ok}

    def check_reference(self, reference: Any) -> bool:
        """A number, or text with one (`#### N` in a full solution), that converts to a fraction."""
        gold, _ = extract_answer(str(reference))
        return gold is not None and same_number(gold, gold)

    def same_answer(self, a: str, b: str) -> bool:
        """Equal numbers: `7`, `7.0` and `007` are one answer (other text compares as text)."""
        a, b = a.strip(), b.strip()
        # Only plain numbers: Fraction would also read `1e999999999`, and spend minutes on it.
        numbers = all(re.fullmatch(NUMBER, text) for text in (a, b))
        return a == b or (numbers and same_number(normalize_number(a), normalize_number(b)))
