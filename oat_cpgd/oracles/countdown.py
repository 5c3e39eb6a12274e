"""CountDown: an arithmetic expression over the given numbers that equals the target.

The scoring follows TinyZero's (verl/utils/reward_score/countdown.py), except that the
format reward needs a parsable expression, not just the `<answer>` tags.
"""

from __future__ import annotations

import ast
import json
import numbers
import operator
from fractions import Fraction
from typing import Any

from oat_cpgd.oracles.base import Info, RewardOracle
from oat_cpgd.oracles.registry import register_oracle

# Bounds the work of parsing and evaluating, and the nesting depth (each level costs a character).
MAX_EXPRESSION_CHARS = 200
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
ALLOWED_NODES = (ast.BinOp, ast.UnaryOp, ast.USub, ast.Constant, *OPERATORS)


def last_answer(response: str) -> str | None:
    """The text inside the last `<answer>...</answer>`, stripped."""
    end = response.rfind("</answer>")
    start = response.rfind("<answer>", 0, max(end, 0))
    if end < 0 or start < 0:
        return None
    return response[start + len("<answer>") : end].strip()


def parse_expression(text: str) -> ast.expr | None:
    """The syntax tree of `text` if it is integers combined by + - * / ( ) and unary minus, else None."""
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError):  # ValueError: NUL bytes
        return None
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED_NODES) or (isinstance(node, ast.Constant) and type(node.value) is not int):
            return None
    return tree


def evaluate(tree: ast.expr) -> Fraction:
    """Exact value of a tree accepted by `parse_expression`; raises ZeroDivisionError."""
    if isinstance(tree, ast.Constant):
        return Fraction(tree.value)
    if isinstance(tree, ast.UnaryOp):
        return -evaluate(tree.operand)
    return OPERATORS[type(tree.op)](evaluate(tree.left), evaluate(tree.right))


def is_integer(value: Any) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@register_oracle("countdown")
class CountdownOracle(RewardOracle):
    """1.0 for an expression in the last `<answer>` that uses each number once and equals the target.

    The reference is `{"target": int, "nums": [int, ...]}` or that as a JSON string. A
    parsable but wrong expression scores `format_reward` (default 0.1), anything else 0.
    """

    def __init__(self, format_reward: float = 0.1, **options: Any) -> None:
        super().__init__(format_reward=format_reward, **options)

    def reward(self, prompt: str, response: str, reference: Any) -> tuple[float, Info]:
        if isinstance(reference, str):
            reference = json.loads(reference)
        target, nums = Fraction(reference["target"]), sorted(int(n) for n in reference["nums"])
        answer = last_answer(response)
        tree = None if answer is None else parse_expression(answer)
        if tree is None:
            return self.score(False, False), {"answer": answer, "format_ok": False}
        used = sorted(node.value for node in ast.walk(tree) if isinstance(node, ast.Constant))
        try:
            correct = used == nums and abs(evaluate(tree) - target) < 1e-5
        except ZeroDivisionError:
            correct = False
        return self.score(correct, True), {"answer": answer, "format_ok": True}

    def check_reference(self, reference: Any) -> bool:
        """`{"target": int, "nums": [int, ...]}` (at least one number), or that as a JSON string."""
        if isinstance(reference, str):
            try:
                reference = json.loads(reference)
            except ValueError:
                return False
        if not isinstance(reference, dict):
            return False
        target, nums = reference.get("target"), reference.get("nums")
        return (
            is_integer(target)
            and isinstance(nums, (list, tuple))
            and len(nums) > 0
            and all(is_integer(n) for n in nums)
        )

    def same_answer(self, a: str, b: str) -> bool:
        """The same expression, however spaced or redundantly parenthesized; other text compares as text."""
        a, b = a.strip(), b.strip()
        if a == b:
            return True
        trees = parse_expression(a), parse_expression(b)
        return None not in trees and ast.dump(trees[0]) == ast.dump(trees[1])
