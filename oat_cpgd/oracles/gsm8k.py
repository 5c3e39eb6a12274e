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
NUMBER_PATTERN = re.compile(NUMBER)
# Explicit ways to state the answer, most explicit first; units and "$" may surround the number.
# Each marker's statement runs on to its end (the second pattern): "The answer is 6*3 = 18." states 18.
MARKED_ANSWERS = [
    (re.compile(rf"####[^\d\n-]{{0,10}}?({NUMBER})"), re.compile(r"\n")),
    (re.compile(rf"\\boxed\{{[^{{}}\d-]{{0,20}}?({NUMBER})"), re.compile(r"\}")),
    (re.compile(rf"answer is[^\d\n-]{{0,20}}?({NUMBER})", re.IGNORECASE), re.compile(r"\n|\.(?!\d)")),
]
# Two values offered as alternatives: "736 or 737", "$5, or $6", "5 \text{ or } 6". No two `\s*` meet
# without a character between them: on a long run of spaces they would take quadratic time.
OR = r"\s*(?:,\s*)?(?:\bor\b|\\text\{\s*or\s*\})\s*(?:\\?\$\s*)?"
ALTERNATIVE_AFTER = re.compile(rf"{OR}({NUMBER})")
ALTERNATIVE_BEFORE = re.compile(rf"({NUMBER}){OR}\Z")
HEDGE_REACH = 100
"""How far before a number to look for an alternative: "or" joins neighbours, and the bound keeps the search short."""


def extract_answer(text: str) -> tuple[str | None, bool]:
    """The final number in `text` without separators, and whether an answer marker stated it.

    Markers are `#### N`, `\\boxed{N}` and "the answer is N"; a marked calculation states the number
    after its last `=` ("the answer is 6*3 = 18"). Without a marker, the last number counts.
    Two different values offered as alternatives ("736 or 737") are no answer: None.
    """
    for pattern, end in MARKED_ANSWERS:
        matches = list(pattern.finditer(text))
        if matches:
            return stated_number(text, matches[-1].start(1), end), True
    numbers = list(NUMBER_PATTERN.finditer(text))
    return (single_value(text, numbers[-1]) if numbers else None), False


def stated_number(text: str, start: int, end: re.Pattern) -> str | None:
    """The number a marked statement arrives at: the first after its last `=`, from `start` to `end`."""
    stop = end.search(text, start)
    statement_end = stop.start() if stop else len(text)
    last_equals = text.rfind("=", start, statement_end)
    number = NUMBER_PATTERN.search(text, last_equals + 1 if last_equals >= 0 else start, statement_end)
    return single_value(text, number) if number else None


def single_value(text: str, number: re.Match) -> str | None:
    """`number`, normalized, unless a different value is offered beside it ("736 or 737"): then None."""
    after = ALTERNATIVE_AFTER.match(text, number.end())
    before = ALTERNATIVE_BEFORE.search(text, max(0, number.start() - HEDGE_REACH), number.start())
    value = normalize_number(number.group())
    alternatives = [normalize_number(match.group(1)) for match in (after, before) if match]
    return None if any(not same_number(value, other) for other in alternatives) else value


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
