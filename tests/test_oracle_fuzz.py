"""Oracle fuzzing at scale: 10,000 generated hostile outputs per built-in oracle, scored through the worker pool.

Each Hypothesis example is a batch of responses scored by one `get_reward` call, so the time
limit is enforced the way the actors meet it. Responses mix code-execution attempts, huge
exponents, deep nesting, unicode, very long strings, unbalanced `\\boxed{` and answers that are
right, inside each oracle's answer markers. None may raise, hang past its time limit, execute
anything (a canary file) or score outside [incorrect_reward, 1].
"""

import ast
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import oat_cpgd.oracles.countdown
import oat_cpgd.oracles.gsm8k
import oat_cpgd.oracles.math_boxed
from oat_cpgd.oracles import get_oracle

BATCHES = 100
BATCH_SIZE = 100
"""10,000 responses per oracle."""
SEED = int(os.environ.get("OAT_FUZZ_SEED", "14"))
"""Fixed, so every run scores the same responses; set OAT_FUZZ_SEED to fuzz with others."""
INCORRECT, FORMAT = -1.0, 0.1
"""Not the defaults, so that a reward the oracle made up (0.0) shows."""
CANARY = "@CANARY@"

PAYLOADS = [
    f"__import__('os').system('touch {CANARY}')",
    f"open('{CANARY}', 'w').write('pwned')",
    f"exec(\"open('{CANARY}', 'w')\")",
    f"eval(\"__import__('pathlib').Path('{CANARY}').touch()\")",
    f"[open('{CANARY}', 'w') for _ in '1']",
    f"(lambda: open('{CANARY}', 'w'))()",
    "().__class__.__base__.__subclasses__()",
    "__builtins__",
    "globals()",
    "breakpoint()",
    "import os",
    "9**9**9",
    "9**9**9**9**9",
    "2**2**2**2**2**2",
    "10**10**10",
    "9^{9^{9}}",
    "10^{10^{10}}",
    "2^{2^{30}}",
    "100000!",
    "\\binom{10^{9}}{5 \\cdot 10^{8}}",
    "1e999999999",
    "-1e999",
    "nan",
    "inf",
    "1/0",
    "6 / (3 - 3)",
    "\\boxed{",
    "\\boxed{}",
    "\\boxed",
    "\\boxed ",
    "\\fbox{",
    "}",
    "{",
    "\\frac{",
    "\\sqrt{",
    "^{",
    "_{",
    "\\left(",
    "\\right)",
    "\\begin{pmatrix}",
    "\\text{",
    "<answer>",
    "</answer>",
    "<think>",
    "####",
    "The answer is",
    "$",
    "\\$",
    "%",
    ",",
    ".",
    "-",
    "+",
    "*",
    "/",
    "(",
    ")",
    "**",
    "=",
    "\x00",
    "\ud800",
    "\udfff",
    "\ufeff",
    "\u202e",
    "１２",
    "ℵ₀",
    "⅞",
    "💥",
    "\u0301",
    "٣",
    "\n",
    "\t",
    " ",
    "0",
    "7",
    "24",
    "1,000",
    "-5",
    "3.14",
    "007",
    "1,2,3",
]
# Bodies each oracle should score 1.0 inside its markers, so that the fuzz also produces right answers.
ORACLES = {
    "gsm8k": ("24", ["24", "24.0", "$24", "24 dollars"]),
    "countdown": ({"target": 24, "nums": [2, 3, 4, 6]}, ["6 * 4 * (3 - 2)", "4 * 6 / (3 - 2)", "-(2 - 3) * 4 * 6"]),
    "math": ("\\frac{1}{2}", ["0.5", "\\frac12", "1/2", "\\dfrac{1}{2}"]),
}  # fmt: skip
WRAPPERS = [
    "@",
    "<answer>@</answer>",
    "\\boxed{@}",
    "#### @",
    "The answer is $@$.",
    "<think>@</think> <answer>@</answer>",
    "so \\boxed{@} and then \\fbox{@",
]
NESTINGS = [
    ("(", ")"),
    ("{", "}"),
    ("\\boxed{", "}"),
    ("\\frac{", "}{2}"),
    ("\\sqrt{", "}"),
    ("[", "]"),
    ("<answer>", "</answer>"),
    ("-", ""),
    ("2**", ""),
    ("9^{", "}"),
    ("\\left(", "\\right)"),
]

atoms = st.sampled_from(PAYLOADS) | st.text(max_size=6) | st.integers(-(10**40), 10**40).map(str)
soup = st.lists(atoms, max_size=12).map("".join)
OPERATORS = ["+", "-", "*", "/", "**", "^", " ", ""]
TOWERS = {"^", ("9^{", "}")}
"""Powers in LaTeX: math-verify may never finish them."""


def expression_strategy(operators: list[str]):
    return st.recursive(
        st.integers(-(10**6), 10**6).map(str) | st.sampled_from(["2", "3", "4", "6", "0", "9**9**9"]),
        lambda inner: (
            st.tuples(inner, st.sampled_from(operators), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
            | inner.map(lambda e: f"-{e}")
        ),
        max_leaves=12,
    )


expressions = expression_strategy(OPERATORS)


def nested(max_depth: int, pairs: list[tuple[str, str]] = NESTINGS, inner=soup | expressions):
    return st.tuples(st.sampled_from(pairs), st.integers(0, max_depth), inner).map(
        lambda t: t[0][0] * t[1] + t[2] + t[0][1] * t[1]
    )


# Very long: up to a million characters of a repeated payload.
repeated = st.tuples(st.sampled_from(PAYLOADS) | soup.filter(bool), st.integers(100, 50_000)).map(
    lambda t: (t[0] * t[1])[:1_000_000]
)


def responses(name: str, heavy: int, light_depth: int, light_towers: bool = True):
    """Batches of BATCH_SIZE responses; `heavy` of them deeply nested or very long.

    `light_towers=False`: the light ones generate no powers (the payloads still have some).
    """
    right = st.sampled_from(ORACLES[name][1])
    if light_towers:
        light_body = soup | expressions | nested(light_depth) | right
    else:
        tame = expression_strategy([op for op in OPERATORS if op not in TOWERS])
        pairs = [pair for pair in NESTINGS if pair not in TOWERS]
        light_body = soup | tame | nested(light_depth, pairs, soup | tame) | right
    heavy_body = nested(5_000) | repeated

    def wrapped(body):
        return st.tuples(st.sampled_from(WRAPPERS), body).map(lambda t: t[0].replace("@", t[1]))

    return st.tuples(
        st.lists(wrapped(light_body), min_size=BATCH_SIZE - heavy, max_size=BATCH_SIZE - heavy),
        st.lists(wrapped(heavy_body), min_size=heavy, max_size=heavy),
    ).map(lambda parts: [*parts[0], *parts[1]])


FUZZ_SETTINGS = settings(
    max_examples=BATCHES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "timeout_s", "heavy", "light_depth", "timeouts_allowed"),
    [
        # Regular expressions and an AST walk: fast on anything, so not one check may time out.
        ("gsm8k", 2.0, 4, 20, False),
        ("countdown", 2.0, 4, 20, False),
        # math-verify takes seconds on some 20 nested brackets and can hang on a tower of powers (a C call
        # no signal interrupts): the pool must stop those at the limit, and each stop costs a new worker
        # (about 1 s to import sympy again). A short limit, fewer heavy responses and light ones shallower
        # and without generated powers keep the test short; the payloads and heavy ones still have towers.
        ("math", 0.25, 1, 6, True),
    ],
)
# Python's parser warns about text such as `1if` (countdown parses answers).
@pytest.mark.filterwarnings("ignore::SyntaxWarning")
def test_fuzzed_hostile_outputs(tmp_path, name, timeout_s, heavy, light_depth, timeouts_allowed):
    reference, _ = ORACLES[name]
    canary = tmp_path / "pwned"
    stats: Counter = Counter()
    with get_oracle(name, timeout_s=timeout_s, incorrect_reward=INCORRECT, format_reward=FORMAT) as oracle:
        inline = get_oracle(name, num_workers=0, incorrect_reward=INCORRECT, format_reward=FORMAT)

        @seed(SEED)
        @FUZZ_SETTINGS
        @given(batch=responses(name, heavy, light_depth, light_towers=not timeouts_allowed))
        def score_batch(batch):
            batch = [response.replace(CANARY, str(canary)) for response in batch]
            assert len(batch) == BATCH_SIZE
            rewards, infos = oracle.get_reward(["q"] * len(batch), batch, [reference] * len(batch))
            timed_out = [info["timed_out"] for info in infos]
            assert [info["error"] for info in infos] == [None] * len(batch), "a check raised or crashed"
            assert all(INCORRECT <= reward <= 1.0 for reward in rewards)
            assert set(rewards) <= {INCORRECT, FORMAT, 1.0}
            assert all(reward == INCORRECT for reward, late in zip(rewards, timed_out, strict=True) if late)
            if not timeouts_allowed:
                assert not any(timed_out), [
                    response[:80] for response, late in zip(batch, timed_out, strict=True) if late
                ]
                # The same rewards scored in this process (nothing can hang here).
                assert inline.get_reward(["q"] * len(batch), batch, [reference] * len(batch))[0] == rewards
            # A check running past its limit is stopped there: the batch takes no longer than its timeouts.
            assert oracle.last_metrics["oracle/verify_time"] < timeout_s * (sum(timed_out) + 1) + 20
            assert not canary.exists(), "a response was executed"
            stats["responses"] += len(batch)
            stats["scoring_ms"] += round(oracle.last_metrics["oracle/verify_time"] * 1000)
            stats["timeouts"] += sum(timed_out)
            stats["chars"] += sum(map(len, batch))
            stats["long"] += sum(len(response) > 100_000 for response in batch)
            stats["deep"] += sum(response.count("(") + response.count("{") > 1_000 for response in batch)
            stats.update(f"reward {reward}" for reward in rewards)

        start = time.perf_counter()
        score_batch()
        # Hypothesis draws small integers more often than large ones, so with one heavy response per
        # batch (math) a very long one is a matter of chance: a full-suite run once drew none. One very
        # long and one deeply nested response are therefore always scored as well, through the same checks.
        extremes = ["\\boxed{" + PAYLOADS[0] * 3_000 + "}", "\\boxed{" + "(" * 1_001 + "1" + ")" * 1_001 + "}"]
        score_batch.hypothesis.inner_test(batch=extremes + [str(reference)] * (BATCH_SIZE - len(extremes)))
    stats["seconds"] = round(time.perf_counter() - start)
    print(f"{name}: {dict(stats)}")
    assert stats["responses"] >= 10_000
    # Not vacuous: right, well-formed but wrong, and wrong answers all came up.
    assert stats[f"reward {1.0}"] > 0 and stats[f"reward {INCORRECT}"] > 0 and stats[f"reward {FORMAT}"] > 0
    if timeouts_allowed:  # the limit was met (towers of powers never finish), but by few responses
        assert 0 < stats["timeouts"] < stats["responses"] / 50


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.sampled_from(PAYLOADS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["target", "nums", "x"]), inner),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def pooled():
    """Each built-in oracle with its workers and a time limit, by name."""
    oracles = {name: get_oracle(name, timeout_s=1.0) for name in ORACLES}
    yield oracles
    for oracle in oracles.values():
        oracle.close()


@pytest.mark.parametrize("name", list(ORACLES))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(reference=JSON_VALUES)
def test_check_reference_never_raises_and_what_it_accepts_scores(pooled, name, reference):
    oracle = pooled[name]
    usable = oracle.check_reference(reference)  # in this process, as the loader calls it
    assert isinstance(usable, bool)
    if usable:  # reward does not raise on it (in the workers: a reference such as 9^{9^{9}} hangs math-verify)
        _, infos = oracle.get_reward(["q"] * 3, ["#### 5", "<answer>2 + 3</answer>", "\\boxed{5}"], [reference] * 3)
        assert [info["error"] for info in infos] == [None] * 3


@pytest.mark.parametrize("name", ["gsm8k", "countdown"])
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(a=soup | expressions | nested(200), b=soup | expressions)
def test_same_answer_never_raises_and_is_reflexive(name, a, b):
    oracle = get_oracle(name, num_workers=0)
    assert oracle.same_answer(a, a) is True
    assert oracle.same_answer(a, b) is oracle.same_answer(b, a)


@pytest.mark.parametrize("module", [oat_cpgd.oracles.gsm8k, oat_cpgd.oracles.countdown, oat_cpgd.oracles.math_boxed])
def test_no_oracle_evaluates_code(module):
    tree = ast.parse(Path(module.__file__).read_text())
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}
