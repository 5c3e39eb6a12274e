"""A complete custom environment: a calculator the model calls with <calc>EXPRESSION</calc>.

A turn that ends with a call gets the result back (<result>N</result>) and the episode goes on; any
other turn is the final answer, which the run's --oracle scores. Data, one JSON object per line:
{"question": "What is 347 * 29?", "answer": "10063"}. Train with it:

    python -m oat_cpgd.experiment.run_cpgd --env examples.my_environment:Calculator --oracle math \\
        --max_turns 4 --max_episode_tokens 512 ...
"""

import ast
import operator
import re

from oat_cpgd.environments import Environment, Step

CALL = re.compile(r"<calc>(.*)</calc>\s*\Z", re.DOTALL)
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def calculate(expression: str) -> str:
    """The value of +, -, *, / over numbers (the model's text: never `eval` it), or the error's message."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("only numbers, +, -, * and / are allowed")

    try:
        return str(value(ast.parse(expression.strip(), mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError) as error:
        return f"error: {error}"


class Calculator(Environment):
    stop = ("</calc>",)  # ends a model turn besides eos and --stop
    metrics = ("calc_calls",)  # summed per episode: actor/calc_calls

    def step(self, action: str) -> Step:
        call = CALL.search(action)
        if call:  # a tool call: answer it, the episode goes on
            return Step(f"<result>{calculate(call.group(1))}</result>", 0.0, False, {"calc_calls": 1})
        reward, info = self.oracle.check(self.prompt, action, self.reference)  # a final answer: scored
        return Step(None, reward, True, {"answer": info["answer"], "format_ok": info["format_ok"]})
