"""The built-in oracles on real benchmark rows from the shared data folder."""

import json
import operator
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import pytest

from oat_cpgd.oracles import get_oracle

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read_jsonl(relative_path: str) -> list[dict]:
    path = DATA / relative_path
    assert path.exists(), f"{path} is missing: these tests need the shared data folder beside the repo"
    return [json.loads(line) for line in path.read_text().splitlines()]


def score(name: str, responses: list[str], references: list) -> list[float]:
    """Rewards through the worker pool, each distinct (response, reference) pair checked once."""
    keys = [(response, json.dumps(reference)) for response, reference in zip(responses, references, strict=True)]
    unique = list(dict.fromkeys(keys))
    # A generous time limit: these tests are about grading, and a loaded machine slows checks down.
    with get_oracle(name, timeout_s=30) as oracle:
        rewards, infos = oracle.get_reward(
            ["q"] * len(unique), [response for response, _ in unique], [json.loads(ref) for _, ref in unique]
        )
    assert not any(info["timed_out"] or info["error"] for info in infos)
    reward_of = dict(zip(unique, rewards, strict=True))
    return [reward_of[key] for key in keys]


def test_gsm8k_gold_answers_score_one_and_gold_plus_one_zero():
    rows = read_jsonl("gsm8k/test.jsonl")
    assert len(rows) == 1319
    formats = [
        "{body}The answer is {answer}.",
        "{body}#### {answer}",
        "{body}So she earns $\\boxed{{{answer}}}$ per day.",
    ]
    responses, references, expected = [], [], []
    for row in rows:
        body = row["answer"].split("####")[0]  # the worked solution, with its intermediate numbers
        gold = int(row["final_answer"])
        for template in formats:
            for reference in (row["answer"], row["final_answer"]):
                responses.append(template.format(body=body, answer=gold))
                references.append(reference)
                expected.append(1.0)
            responses.append(template.format(body=body, answer=gold + 1))
            references.append(row["answer"])
            expected.append(0.0)
        # Thousands separators, dollars and units, as models write them.
        responses.append(f"{body}The answer is ${gold:,} dollars.")
        references.append(row["answer"])
        expected.append(1.0)
    assert score("gsm8k", responses, references) == expected


MATH_SETS = [
    "math500/test.jsonl",
    "deepscaler_eval/aime.jsonl",
    "deepscaler_eval/amc.jsonl",
    "deepscaler_eval/math.jsonl",
]
# math-verify 0.9.0 accepts the boxed gold answer of every row of these sets (1,113 rows), so
# no rows are known to fail (the spec allows up to 1%).
KNOWN_GOLD_FAILURES: dict[str, list[int]] = {path: [] for path in MATH_SETS}
# Rows whose next row's answer is different text but the same value, so that it rightly scores 1.0:
# row 22's answer is "5", row 23's "x=5" (math-verify compares an equation by its right-hand side).
EQUIVALENT_NEXT_ANSWERS = {"math500/test.jsonl": [22], "deepscaler_eval/math.jsonl": [22]}


@pytest.mark.slow
def test_math_boxed_gold_answers_score_one_and_other_answers_zero():
    responses, references, checks = [], [], []
    for path in MATH_SETS:
        rows = read_jsonl(path)
        answers = [row["answer"] for row in rows]
        # As a model writes the gold answer: AMC's float 142.0 as 142.
        written = [str(int(answer)) if isinstance(answer, float) else answer for answer in answers]
        for i, answer in enumerate(answers):
            other = written[(i + 1) % len(rows)]
            cases = [("gold", f"Putting it together, the final answer is $\\boxed{{{written[i]}}}$.")]
            if other != written[i]:
                cases.append(("next", f"So the answer is $\\boxed{{{other}}}$."))
            for kind, response in cases:
                responses.append(response)
                references.append(answer)
                checks.append((path, kind, i))
    rewards = score("math", responses, references)

    def rows_scoring(reward: float, kind: str) -> dict[str, list[int]]:
        """Per set, the rows whose `kind` response scored `reward`."""
        found = {path: [] for path in MATH_SETS}
        for (path, check_kind, i), check_reward in zip(checks, rewards, strict=True):
            if check_kind == kind and check_reward == reward:
                found[path].append(i)
        return found

    assert rows_scoring(0.0, "gold") == KNOWN_GOLD_FAILURES
    assert rows_scoring(1.0, "next") == {path: EQUIVALENT_NEXT_ANSWERS.get(path, []) for path in MATH_SETS}
    assert set(rewards) == {0.0, 1.0}


OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def countdown_solution(target: int, nums: list[int]) -> str | None:
    """An expression using each number once that equals target, by exhaustive search."""

    def search(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == target else None
        for i, j in combinations(range(len(items)), 2):
            rest = [item for k, item in enumerate(items) if k not in (i, j)]
            for (a, a_text), (b, b_text) in [(items[i], items[j]), (items[j], items[i])]:
                for symbol, apply in OPERATORS.items():
                    if symbol == "/" and b == 0:
                        continue
                    found = search([*rest, (apply(a, b), f"({a_text} {symbol} {b_text})")])
                    if found:
                        return found
        return None

    return search([(Fraction(n), str(n)) for n in nums])


def test_countdown_found_solutions_score_one_and_misuses_format_reward():
    rows = read_jsonl("countdown/train_head.jsonl")[:200]
    solved = [(row, solution) for row in rows if (solution := countdown_solution(row["target"], row["nums"]))]
    assert len(solved) >= 100
    responses, references, expected = [], [], []
    for row, solution in solved:
        nums = row["nums"]
        reference = {"target": row["target"], "nums": nums}
        cases = [
            (f"<think>Searching.</think> <answer>{solution}</answer>", 1.0),
            (f"<answer>{solution} + 1</answer>", 0.1),  # 1 is not given (or used twice): wrong
            (f"<answer>{solution} * {nums[0]} / {nums[0]}</answer>", 0.1),  # right value, number reused
            (f"<answer>{' + '.join(map(str, nums[1:]))}</answer>", 0.1),  # a number left out
            (f"<answer>{' + '.join(map(str, nums))} + 0.5 - 0.5</answer>", 0.0),  # not integers only
            (f"The expression is {solution}.", 0.0),  # no answer tags
        ]
        if sum(nums) != row["target"]:
            cases.append((f"<answer>{' + '.join(map(str, nums))}</answer>", 0.1))  # wrong value
        for response, reward in cases:
            responses.append(response)
            references.append(json.dumps(reference) if len(responses) % 2 else reference)
            expected.append(reward)
    assert score("countdown", responses, references) == expected
