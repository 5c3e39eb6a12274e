"""Reward oracles: the worker pool, the registry, each built-in oracle, hostile inputs."""

import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oat_cpgd.oracles import (
    ORACLES,
    CountdownOracle,
    GSM8KOracle,
    MathOracle,
    RewardOracle,
    get_oracle,
    register_oracle,
)
from oat_cpgd.oracles.gsm8k import extract_answer
from oat_cpgd.oracles.math_boxed import text_verdict

INFO_KEYS = {"answer", "format_ok", "timed_out", "error"}


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class FlakyOracle(RewardOracle):
    """Misbehaves as the response says; the reference is a file that receives the worker's pid."""

    def reward(self, prompt, response, reference):
        Path(reference).write_text(str(os.getpid()))
        if response == "sleep":
            time.sleep(3600)
        if response == "raise":
            raise ValueError("boom")
        if response == "exit":
            sys.exit(3)
        if response == "crash":
            os._exit(1)
        return 1.0


@pytest.fixture(scope="module")
def gsm8k():
    with get_oracle("gsm8k") as oracle:
        yield oracle


@pytest.fixture(scope="module")
def countdown():
    with get_oracle("countdown") as oracle:
        yield oracle


@pytest.fixture(scope="module")
def math():
    with get_oracle("math") as oracle:
        yield oracle


@pytest.fixture(scope="module")
def patient_math():
    """A time limit a loaded machine does not reach (a worker's first equation imports sympy's solver)."""
    with get_oracle("math", timeout_s=30) as oracle:
        yield oracle


# --- The worker pool -------------------------------------------------------------


def test_hung_crashing_and_raising_checks_are_contained_and_workers_replaced(tmp_path):
    pid_files = [tmp_path / f"{i}.pid" for i in range(5)]
    with FlakyOracle(timeout_s=1.0) as oracle:
        rewards, infos = oracle.get_reward(["p"] * 5, ["ok", "sleep", "raise", "exit", "crash"], pid_files)
        assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0]
        assert all(set(info) >= INFO_KEYS for info in infos)
        assert [info["timed_out"] for info in infos] == [False, True, False, False, False]
        assert infos[0]["error"] is None and infos[1]["error"] is None
        assert infos[2]["error"] == "ValueError: boom"
        assert infos[3]["error"] == "SystemExit: 3"
        assert "ProcessExpired" in infos[4]["error"]
        assert oracle.last_metrics["oracle/timeouts"] == 1
        assert oracle.last_metrics["oracle/errors"] == 3
        assert oracle.last_metrics["oracle/reward_mean"] == pytest.approx(0.2)
        assert 1.0 <= oracle.last_metrics["oracle/verify_time"] < 30
        hung_pid = int(pid_files[1].read_text())
        assert not alive(hung_pid), "the hung worker must have been killed"

        # The pool goes on working with fresh workers.
        rewards, infos = oracle.get_reward(["p"] * 4, ["ok"] * 4, pid_files[:4])
        assert rewards == [1.0] * 4
        assert oracle.last_metrics["oracle/timeouts"] == oracle.last_metrics["oracle/errors"] == 0
        assert infos[0] == {"answer": None, "format_ok": True, "timed_out": False, "error": None}
        worker_pids = {int(path.read_text()) for path in pid_files[:4]}
        assert os.getpid() not in worker_pids
    assert not any(alive(pid) for pid in worker_pids), "close() must stop the workers"


@pytest.mark.parametrize("options", [{"num_workers": 0}, {"timeout_s": None}])
def test_inline_mode_runs_in_process_and_contains_errors(tmp_path, options):
    oracle = FlakyOracle(**options)
    rewards, infos = oracle.get_reward(["p", "p"], ["ok", "raise"], [tmp_path / "a", tmp_path / "b"])
    assert rewards == [1.0, 0.0]
    assert infos[1]["error"] == "ValueError: boom"
    assert int((tmp_path / "a").read_text()) == os.getpid()
    assert oracle.last_metrics["oracle/errors"] == 1


def test_oracle_pickles_with_a_running_pool(gsm8k):
    assert gsm8k.get_reward(["q"], ["#### 5"], ["5"])[0] == [1.0]
    clone = pickle.loads(pickle.dumps(gsm8k))
    try:
        assert clone.timeout_s == gsm8k.timeout_s
        assert clone.get_reward(["q", "q"], ["#### 5", "#### 6"], ["5", "5"])[0] == [1.0, 0.0]
    finally:
        clone.close()


def test_empty_batch(gsm8k):
    assert gsm8k.get_reward([], [], []) == ([], [])
    assert gsm8k.last_metrics["oracle/reward_mean"] == 0.0


def test_mismatched_batch_lengths_raise(gsm8k):
    with pytest.raises(ValueError):
        gsm8k.get_reward(["q"], ["#### 5", "#### 6"], ["5", "5"])


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        from test_oracles import FlakyOracle

        if __name__ == "__main__":
            FlakyOracle(timeout_s=600).get_reward(["p"], ["sleep"], [{str(pid_file)!r}])
        """)
    )
    sys_path = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    parent = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": sys_path})
    try:
        assert wait_until(pid_file.exists, 60), "the worker never started"
        worker_pid = int(pid_file.read_text())
    finally:
        parent.kill()
        parent.wait()
    assert wait_until(lambda: not alive(worker_pid), 10), "the hung worker outlived its parent"


# --- The registry and the README example --------------------------------------------


def test_registry_names_and_aliases():
    assert type(get_oracle("gsm8k")) is GSM8KOracle
    assert type(get_oracle("countdown")) is CountdownOracle
    assert type(get_oracle("math")) is type(get_oracle("deepscaler")) is MathOracle
    oracle = get_oracle("countdown", timeout_s=5.0, num_workers=1, format_reward=0.2)
    assert (oracle.timeout_s, oracle.num_workers, oracle.format_reward) == (5.0, 1, 0.2)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="countdown.*deepscaler.*gsm8k.*math"):
        get_oracle("gsm9k")


def test_module_colon_class_names():
    assert type(get_oracle("oat_cpgd.oracles.gsm8k:GSM8KOracle")) is GSM8KOracle
    with pytest.raises(TypeError, match="not a subclass of RewardOracle"):
        get_oracle("pathlib:Path")
    with pytest.raises(AttributeError):
        get_oracle("oat_cpgd.oracles.gsm8k:NoSuchOracle")
    with pytest.raises(ModuleNotFoundError):
        get_oracle("no_such_module:Oracle")


def test_register_oracle(tmp_path):
    assert register_oracle("flaky")(FlakyOracle) is FlakyOracle
    try:
        assert ORACLES["flaky"] is FlakyOracle
        assert get_oracle("flaky", num_workers=0).get_reward(["p"], ["ok"], [tmp_path / "pid"])[0] == [1.0]
    finally:
        del ORACLES["flaky"]


def test_readme_example_oracle():
    with get_oracle("examples.my_oracle:IntegerAnswerOracle") as oracle:
        responses = ["17 * 23 = 391.\nAnswer: 391", "Answer: 1,000", "Answer: -3", "Answer: 390", "I don't know"]
        rewards, infos = oracle.get_reward(["q"] * 5, responses, ["391", "1000", "-3", "391", "391"])
    assert rewards == [1.0, 1.0, 1.0, 0.1, 0.0]
    assert [info["answer"] for info in infos] == ["391", "1000", "-3", "390", None]
    assert [info["format_ok"] for info in infos] == [True, True, True, True, False]


# --- Built-in oracles: specific cases ------------------------------------------------


@pytest.mark.parametrize(
    ("response", "reference", "reward", "answer", "format_ok"),
    [
        ("She pays 3 * 6 = 18 dollars.\n#### 18", "18", 1.0, "18", True),
        ("#### $1,080", "1080", 1.0, "1080", True),
        ("The answer is $1,080.00.", "#### 1,080", 1.0, "1080", True),
        ("So the answer is: **72** clips.", "Natalia sold 48 + 24 = <<48+24=72>>72 clips.\n#### 72", 1.0, "72", True),
        ("The total is $\\boxed{\\$42}$.", "42", 1.0, "42", True),
        ("It grows by 25%.", "25", 1.0, "25", False),
        ("He ends with 7.0 apples", "7", 1.0, "7", False),
        ("The temperature is -5 degrees.", "-5", 1.0, "-5", False),
        ("She had 10 and gave 3, so 10-3", "3", 1.0, "3", False),
        ("#### 18\nThe answer is 19.", "18", 1.0, "18", True),  # "####" outranks the others
        ("The answer is 19.", "18", 0.0, "19", True),
        ("I cannot say.", "18", 0.0, None, False),
    ],
)
def test_gsm8k_cases(gsm8k, response, reference, reward, answer, format_ok):
    rewards, infos = gsm8k.get_reward(["q"], [response], [reference])
    assert rewards == [reward]
    assert (infos[0]["answer"], infos[0]["format_ok"]) == (answer, format_ok)


def test_gsm8k_format_reward():
    oracle = GSM8KOracle(num_workers=0, format_reward=0.1)
    assert oracle.get_reward(["q"] * 3, ["#### 3", "#### 4", "maybe 4"], [3, 3, 3])[0] == [1.0, 0.1, 0.0]


@pytest.mark.parametrize(
    ("response", "reference", "reward", "answer"),
    [
        ("The answer is 6*3 = 18.", "18", 1.0, "18"),
        ("The answer is 6*3 = 18.", "6", 0.0, "18"),
        ("The answer is 216/27 = 8.", "8", 1.0, "8"),
        ("The answer is 216/27 = 8.", "216", 0.0, "8"),
        ("\\boxed{6*4 = 24}", "24", 1.0, "24"),
        ("So she pays $\\boxed{6 \\times 4 = \\$24}$.", "24", 1.0, "24"),
        ("#### 6 * 4 = 24", "24", 1.0, "24"),
        ("The answer is 48 + 24 = <<48+24=72>>72 clips.", "72", 1.0, "72"),
        ("The answer is 5 - 8 = -3.", "-3", 1.0, "-3"),
        ("The answer is 10 / 4 = 2.5 hours.", "2.5", 1.0, "2.5"),
        ("The answer is 6*3 = 19.", "18", 0.0, "19"),
        # The statement ends at its full stop or line: later working is not the answer.
        ("The answer is 6*3 = 18. Check: 18/3 = 6", "18", 1.0, "18"),
        ("\\boxed{18} since 6*3 = 18 and 2 = 2", "18", 1.0, "18"),
        ("The answer is 6*3 =", "18", 0.0, None),
    ],
)
def test_gsm8k_marked_calculation_states_the_number_after_its_last_equals(gsm8k, response, reference, reward, answer):
    rewards, infos = gsm8k.get_reward(["q"], [response], [reference])
    assert rewards == [reward]
    assert (infos[0]["answer"], infos[0]["format_ok"]) == (answer, True)


@pytest.mark.parametrize(
    ("response", "answer", "format_ok"),
    [
        ("The answer is either 736 or 737.", None, True),
        ("The answer is 737 or 736.", None, True),
        ("#### $736 or $737", None, True),
        ("The answer is 736, or 737.", None, True),
        ("\\boxed{736 \\text{ or } 737}", None, True),
        ("It comes to 736 or 737", None, False),
        ("It is 735 or 736 or 737", None, False),
        # Not two values offered: the same value twice, a number in the working, one answer in two units.
        ("The answer is 736 or 736.0", "736", True),
        ("She sells 3 or 4 a day, so 736 in all.\n#### 736", "736", True),
        ("She sells 3 or 4 a day, so 736 in all.", "736", False),
        ("The answer is 736 minutes or 12 hours.", "736", True),
    ],
)
def test_gsm8k_two_different_values_offered_are_no_answer(gsm8k, response, answer, format_ok):
    rewards, infos = gsm8k.get_reward(["q", "q"], [response, response], ["736", "737"])
    assert rewards == [float(answer == "736"), 0.0]
    assert (infos[0]["answer"], infos[0]["format_ok"]) == (answer, format_ok)


COUNTDOWN_REFERENCE = {"target": 24, "nums": [2, 3, 4, 6]}


@pytest.mark.parametrize(
    ("response", "reward"),
    [
        ("<think>2*3*4=24, then 6?</think><answer>(6 - 4 + 2) * 3 * 2 / 2 </answer>", 0.1),  # 2 thrice
        ("<answer>6 * 4 * (3 - 2)</answer>", 1.0),
        ("<answer>2 * 3 * 4 + 6 - 6</answer>", 0.1),  # 6 twice
        ("<answer>6 * 4</answer>", 0.1),  # 2 and 3 left out
        ("<answer>6 / (3 - 3) + 2 * 4</answer>", 0.1),  # division by zero
        ("<answer>(6 + 2) * (4 - 3)</answer>", 0.1),  # = 8
        ("<answer>-(2 - 3) * 4 * 6</answer>", 1.0),
        ("<answer>6 / (2 / 4) * 3 / 1</answer>", 0.1),  # 1 is not given
        ("<answer>wrong</answer> then <answer>4 * 6 / (3 - 2)</answer>", 1.0),  # the last one counts
        ("<answer>4 * 6 * (3 - 2)</answer> then <answer>x</answer>", 0.0),
        ("<answer>24 = 6 * 4 * (3 - 2)</answer>", 0.0),
        ("<answer>6.0 * 4 * (3 - 2)</answer>", 0.0),
        ("<answer>True * 24</answer>", 0.0),
        ("<answer>6 ** 4 * (3 - 2)</answer>", 0.0),
        ("6 * 4 * (3 - 2)", 0.0),
        ("<answer>6 * 4 * (3 - 2)", 0.0),
    ],
)
def test_countdown_cases(countdown, response, reward):
    rewards, infos = countdown.get_reward(
        ["q", "q"], [response, response], [COUNTDOWN_REFERENCE, '{"target": 24, "nums": [2, 3, 4, 6]}']
    )
    assert rewards == [reward, reward]
    assert infos[0]["format_ok"] is (reward > 0)


@pytest.mark.parametrize(
    ("response", "reference", "reward", "answer"),
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "0.5", 1.0, "\\frac{1}{2}"),
        ("\\boxed{0.5}", "\\frac12", 1.0, "0.5"),
        ("\\boxed{\\dfrac{3}{4}}", "0.75", 1.0, "\\dfrac{3}{4}"),
        ("\\boxed{142}", 142.0, 1.0, "142"),
        ("\\boxed{142.0}", "142", 1.0, "142.0"),
        ("\\boxed{7}", 7, 1.0, "7"),
        ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0, "(3, \\frac{\\pi}{2})"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0, "2\\sqrt{2}"),
        ("First \\boxed{3}, no wait: \\fbox{4}", "4", 1.0, "4"),
        ("\\boxed 5.", "5", 1.0, "5"),
        ("\\boxed{B}", ["\\text{(B)}", "B"], 1.0, "B"),
        ("\\boxed{0.5}", ["1/3", "1/2"], 1.0, "0.5"),
        ("\\boxed{4}", "The sum is $2+2=\\boxed{4}$.", 1.0, "4"),
        ("\\boxed{3}", "4", 0.0, "3"),
        ("\\boxed{\\frac{1}{3}}", "0.33", 0.0, "\\frac{1}{3}"),
        ("The answer is 4.", "4", 0.0, None),  # no box
        ("\\boxed{4", "4", 0.0, None),
    ],
)
def test_math_cases(math, response, reference, reward, answer):
    rewards, infos = math.get_reward(["q"], [response], [reference])
    assert rewards == [reward]
    assert (infos[0]["answer"], infos[0]["format_ok"]) == (answer, answer is not None)


def test_math_format_reward():
    oracle = MathOracle(num_workers=0, format_reward=0.1)
    assert oracle.get_reward(["q"] * 3, ["\\boxed{3}", "\\boxed{4}", "4"], [3, 3, 3])[0] == [1.0, 0.1, 0.0]


# Where math-verify alone is wrong, the oracle decides; each row is a boxed answer, its gold, its reward.
MATH_BASES = [
    ("40_{8}", "40_9", 0.0),
    ("4343_{7}", "4343_6", 0.0),
    ("40_9", "40_9", 1.0),
    ("40_{9}", "40_9", 1.0),
    ("(40)_9", "40_9", 1.0),
    ("\\text{40}_{9}", "40_9", 1.0),
    ("040_9", "40_9", 1.0),
    ("40", "40_9", 1.0),  # no base: read in the gold's, which the question asked for
    ("36", "40_9", 0.0),  # 40_9 in decimal: not the base asked for
    ("4343_6", "4343_{6}", 1.0),
    ("1011001_2", "1011001_{(2)}", 1.0),
    ("1011011_2", "1011001_{(2)}", 0.0),
    ("A5_{11}", "\\text{A5}_{11}", 1.0),
    ("-37_8", "-37_8", 1.0),
    ("37_8", "-37_8", 0.0),
    ("10_2", "10", 0.0),  # a plain gold is decimal
    ("36_{10}", "36", 1.0),
]
MATH_DECIMALS = [
    (".0000673", ".0000672", 0.0),
    ("0.0000671", ".0000672", 0.0),
    (".0000672", ".0000672", 1.0),
    ("0.0000672", ".0000672", 1.0),
    ("6.72 \\times 10^{-5}", ".0000672", 1.0),
    ("\\frac{42}{625000}", ".0000672", 1.0),
    ("0.00000001", "0.00000002", 0.0),
    ("0.333333", "\\frac{1}{3}", 1.0),  # six significant digits, as math-verify has it
    ("0.142857", "\\frac{1}{7}", 1.0),
    ("0.33333", "\\frac{1}{3}", 0.0),
    ("0.0333333", "\\frac{1}{30}", 1.0),
    ("0.033333", "\\frac{1}{30}", 0.0),  # five: math-verify's six places took it
    ("10.9956", "\\frac{7\\pi}{2}", 0.0),  # from 0.1 up, six decimal places
    ("10.995574", "\\frac{7\\pi}{2}", 1.0),
    ("310235041.0", "310235040", 0.0),
    ("12.5\\%", "0.125", 1.0),
    ("12.5", "12.5\\%", 0.0),
]
MATH_CALCULATIONS = [
    ("= 410235040", "2 \\cdot\\binom{30}{15} = 310235040", 0.0),
    ("2 \\cdot\\binom{30}{15} = 410235040", "2 \\cdot\\binom{30}{15} = 310235040", 0.0),
    ("410235040", "2 \\cdot\\binom{30}{15} = 310235040", 0.0),
    ("310235040", "2 \\cdot\\binom{30}{15} = 310235040", 1.0),
    ("2 \\cdot \\binom{30}{15} = 310235040", "2 \\cdot\\binom{30}{15} = 310235040", 1.0),
    ("2 + 2 = 5", "2 + 2 = 4", 0.0),
    ("2 + 2 = 4", "2 + 2 = 4", 1.0),
    ("4", "2 + 2 = 4", 1.0),
    ("5", "2 + 2 = 4", 0.0),
    ("1 + 3 = 2 + 2 = 4", "2 + 2 = 4", 1.0),
    ("0.56", "0.56 = 56\\%", 1.0),
    ("56\\%", "0.56 = 56\\%", 1.0),
    ("0.65", "0.56 = 56\\%", 0.0),
    ("2 + 2 = 5", "5", 0.0),  # an answer written as a calculation must hold
    ("2 + 3 = 5", "5", 1.0),
    ("x = 5", "5", 1.0),  # equations with variables stay math-verify's
    ("y = 2x + 3", "y = 2x + 3", 1.0),
    ("y = 2x + 4", "y = 2x + 3", 0.0),
]
MATH_TEXT = [
    ("B,C", "\\text{B,C}", 1.0),
    ("B, C", "\\text{B,C}", 1.0),
    ("\\text{B, C}", "\\text{B,C}", 1.0),
    ("\\textbf{b,c}", "\\text{B,C}", 1.0),
    ("B", "\\text{B,C}", 0.0),
    ("C,B", "\\text{B,C}", 0.0),  # deliberately strict: the options in the gold's order
    ("B,C,D", "\\text{B,C}", 0.0),
    ("(B)", "\\text{(B)}", 1.0),
    ("B", "\\text{(B)}", 1.0),
    ("\\text{(C)}", "\\text{(B)}", 0.0),
    ("\\text{Evelyn}.", "\\text{Evelyn}", 1.0),
    ("\\text{Navin}", "\\text{Evelyn}", 0.0),
    ("4:10 P.M.", "\\text{4:10 P.M.}", 1.0),
    ("\\text{4:10 p.m.}", "\\text{4:10 P.M.}", 1.0),
    ("\\text{(1) and (4)}", "\\text{(1) and (4)}", 1.0),
    ("(1), (4)", "\\text{(1) and (4)}", 0.0),
    ("4", "\\mbox{four}", 0.0),
]


@pytest.mark.parametrize(
    ("boxed", "reference", "reward"),
    [
        *[pytest.param(*case, id=f"base-{i}") for i, case in enumerate(MATH_BASES)],
        *[pytest.param(*case, id=f"decimal-{i}") for i, case in enumerate(MATH_DECIMALS)],
        *[pytest.param(*case, id=f"calculation-{i}") for i, case in enumerate(MATH_CALCULATIONS)],
        *[pytest.param(*case, id=f"text-{i}") for i, case in enumerate(MATH_TEXT)],
    ],
)
def test_math_forms_the_oracle_decides(patient_math, boxed, reference, reward):
    rewards, infos = patient_math.get_reward(["q"], [f"So the answer is $\\boxed{{{boxed}}}$."], [reference])
    assert rewards == [reward]
    assert infos[0]["answer"] == boxed


# --- Hostile outputs ---------------------------------------------------------------


def hostile_texts(canary: Path) -> list[str]:
    return [
        "9**9**9",
        "9**9**9**9**9",
        f"__import__('os').system('touch {canary}')",
        f"().__class__.__base__.__subclasses__() or open('{canary}', 'w')",
        "(" * 10_000 + "1" + ")" * 10_000,
        "{" * 10_000 + "1" + "}" * 10_000,
        "\\frac{" * 5_000 + "1",
        "-" * 10_000 + "1",
        "1+" * 100_000 + "1",
        "9" * 1_000_000,
        ("lorem ipsum 17 <answer> \\boxed{ #### (" * 30_000)[:1_000_000],
        "\\boxed{",
        "\\boxed{}",
        "\\boxed",
        "}}}{{{\\boxed{{{1}",
        "\x00" * 100 + "1\x00",
        "\ud800\udfff\ufeff\u202e１２ℵ₀⅞💥\u0301",
        "",
    ]


@pytest.mark.parametrize(
    ("name", "wrappers", "reference"),
    [
        ("gsm8k", ["{}", "#### {}", "The answer is {}"], "31337"),
        ("countdown", ["{}", "<answer>{}</answer>"], {"target": 31337, "nums": [2, 3]}),
        ("math", ["{}", "\\boxed{{{}}}"], "\\frac{31337}{2}"),
    ],
)
def test_hostile_outputs_score_zero_in_time(request, tmp_path, name, wrappers, reference):
    oracle = request.getfixturevalue(name)
    canary = tmp_path / "pwned"
    responses = [wrapper.format(text) for text in hostile_texts(canary) for wrapper in wrappers]
    rewards, infos = oracle.get_reward(["q"] * len(responses), responses, [reference] * len(responses))
    assert rewards == [0.0] * len(responses)
    assert all(set(info) >= INFO_KEYS for info in infos)
    # Each check takes at most its time limit: a hang would show as a much longer call.
    assert oracle.last_metrics["oracle/verify_time"] < oracle.timeout_s * len(responses) / 2 + 20
    assert not canary.exists()
    assert oracle.get_reward(["q"], ["nothing here"], [reference])[0] == [0.0]


@pytest.mark.parametrize(
    ("read", "text"),
    [
        (extract_answer, "#### 5 or" + " " * 1_000_000 + "x"),  # the hedge's spaces
        (extract_answer, "The answer is 5," + " " * 1_000_000 + "x"),
        (lambda text: text_verdict("40_9", text), "9" * 1_000_000),  # a base number's digits
        (lambda text: text_verdict("40_9", text), "A" * 1_000_000 + "_9"),
    ],
)
def test_answer_forms_are_read_in_linear_time(read, text):
    """In this process, with no pool to stop them: patterns that backtrack would take hours on these."""
    start = time.perf_counter()
    read(text)
    assert time.perf_counter() - start < 10


# --- Properties over random text -----------------------------------------------------

FRAGMENTS = [
    "\\boxed{",
    "\\fbox{",
    "}",
    "{",
    "<answer>",
    "</answer>",
    "####",
    "The answer is",
    "(",
    ")",
    "**",
    "/",
    "-",
    "1,000",
    "0",
    "7",
    " ",
]
RANDOM_RESPONSES = st.lists(
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4)).map("".join), min_size=1, max_size=16
)


@pytest.mark.parametrize(
    ("name", "reference", "rewards"),
    [
        ("gsm8k", "7", {0.0, 1.0}),
        ("countdown", {"target": 7, "nums": [1, 7]}, {0.0, 0.1, 1.0}),
        ("math", "\\frac{7}{1,000}", {0.0, 1.0}),
    ],
)
@settings(max_examples=100, deadline=None)
@given(responses=RANDOM_RESPONSES)
def test_random_responses_never_raise_and_stay_in_range(request, name, reference, rewards, responses):
    oracle = request.getfixturevalue(name)
    scores, infos = oracle.get_reward(["q"] * len(responses), responses, [reference] * len(responses))
    assert set(scores) <= rewards
    assert all(set(info) >= INFO_KEYS and info["error"] is None for info in infos)


# --- Reference checks and answer equivalence ------------------------------------------


def test_base_oracle_accepts_every_reference_and_compares_answers_as_text():
    oracle = FlakyOracle(num_workers=0)
    assert all(oracle.check_reference(reference) for reference in [None, "", 0, {"any": "thing"}])
    assert oracle.same_answer(" 5\n", "5") and not oracle.same_answer("0.5", "1/2")


@pytest.mark.parametrize(
    ("name", "reference", "usable"),
    [
        ("gsm8k", "18", True),
        ("gsm8k", 18, True),
        ("gsm8k", 7.5, True),
        ("gsm8k", "Natalia sold 48 + 24 = <<48+24=72>>72 clips.\n#### 72", True),
        ("gsm8k", "#### 1,080", True),
        ("gsm8k", None, False),
        ("gsm8k", "", False),
        ("gsm8k", "no number here", False),
        ("gsm8k", float("nan"), False),
        ("gsm8k", "9" * 5_000, False),  # more digits than Python converts: never equal
        ("countdown", {"target": 24, "nums": [2, 3, 4, 6]}, True),
        ("countdown", '{"target": 24, "nums": [2, 3, 4, 6]}', True),
        ("countdown", {"target": 24, "nums": []}, False),
        ("countdown", {"target": "24", "nums": [2, 3]}, False),
        ("countdown", {"target": 24.5, "nums": [2, 3]}, False),
        ("countdown", {"target": True, "nums": [2, 3]}, False),
        ("countdown", {"target": 24, "nums": [2, None]}, False),
        ("countdown", {"target": 24, "nums": "2, 3"}, False),
        ("countdown", {"nums": [2, 3]}, False),
        ("countdown", '{"target": 24, ', False),
        ("countdown", 24, False),
        ("countdown", None, False),
        ("math", "\\frac{14}{3}", True),
        ("math", 142.0, True),
        ("math", 7, True),
        ("math", "The sum is $2+2=\\boxed{4}$.", True),
        ("math", ["\\text{(B)}", "B"], True),
        ("math", ["", "B"], True),  # one usable answer is enough
        ("math", [], False),
        ("math", None, False),
        ("math", "", False),
        ("math", " $ ", False),
        ("math", float("nan"), False),
        ("math", True, False),
        # Unbalanced braces: \boxed{...} around it does not close (two such rows are in DeepScaleR).
        ("math", "3,-\\frac{3}{2}+\\frac{3i\\sqrt{3}}{2},-\\frac{3}{2}-\\frac{3i\\sqrt{3}}{2", False),
        ("math", "}{", False),
    ],
)
def test_check_reference(name, reference, usable):
    oracle = get_oracle(name, num_workers=0)
    assert oracle.check_reference(reference) is usable


@pytest.mark.parametrize("name", ["gsm8k", "countdown", "math"])
def test_rejected_references_can_never_score_one(name):
    """What check_reference rejects, no real answer matches: reward raises or scores below 1.

    (A None reference is the text "None" to math-verify: only `\\boxed{None}` would match it.)
    """
    oracle = get_oracle(name, num_workers=0)
    bad = {
        "gsm8k": [None, "", "no number here"],
        "countdown": [{"target": 24, "nums": []}, {"nums": [2, 3]}, None],
        "math": [None, "", " $ "],
    }[name]
    responses = ["#### 24", "<answer>24</answer>", "\\boxed{24}", "\\boxed{}", "None", ""]
    for reference in bad:
        rewards, _ = oracle.get_reward(["q"] * len(responses), responses, [reference] * len(responses))
        assert max(rewards) < 1.0, reference


@pytest.mark.parametrize(
    ("name", "a", "b", "same"),
    [
        ("math", "0.5", "\\frac12", True),
        ("math", "1/2", "\\frac{1}{2}", True),
        ("math", "0.5", "1/2", True),
        ("math", "\\dfrac{3}{4}", "0.75", True),
        ("math", "2\\sqrt{2}", "\\sqrt{8}", True),
        ("math", " 7 ", "7", True),
        ("math", "3", "4", False),
        ("math", "\\frac{1}{3}", "0.33", False),
        ("math", "", "0", False),
        ("math", "}{", "{}", False),
        ("math", "40_9", "40_{9}", True),
        ("math", "40_9", "40_8", False),
        ("math", ".0000672", "0.0000673", False),
        ("math", "2 + 2 = 4", "2 + 2 = 5", False),
        ("math", "\\text{B,C}", "\\text{B, C}", True),
        ("gsm8k", "7", "7.0", True),
        ("gsm8k", "007", "7", True),
        ("gsm8k", "-0", "0", True),
        ("gsm8k", "7", "8", False),
        ("gsm8k", "1e9999999", "1e9999999 ", True),  # same text; never converted to a number
        ("gsm8k", "1e3", "1000", False),
        ("countdown", "6*4*(3-2)", "(6 * 4) * (3 - 2)", True),
        ("countdown", "6*4*(3-2)", "4*6*(3-2)", False),
        ("countdown", "x y", " x y", True),
        ("countdown", "9**9**9", "9 ** 9 ** 9", False),  # not an allowed expression: compared as text
    ],
)
def test_same_answer(name, a, b, same):
    oracle = get_oracle(name, num_workers=0)
    assert oracle.same_answer(a, b) is same
    assert oracle.same_answer(b, a) is same


def test_math_decimal_comparison_keeps_the_time_limit_in_the_main_thread():
    """same_answer runs in the driver, without the pool: a decimal whose value takes minutes stops at the limit."""
    oracle = MathOracle(num_workers=0, timeout_s=1)
    start = time.perf_counter()
    assert oracle.same_answer("0.5\\sin(10^{10^{6}})", "0.5") is False
    assert time.perf_counter() - start < 30


def test_math_same_answer_contains_math_verify_errors(monkeypatch):
    import oat_cpgd.oracles.math_boxed as math_boxed

    def broken(*args, **kwargs):
        raise RuntimeError("math-verify broke")

    monkeypatch.setattr(math_boxed, "equivalent", broken)
    oracle = MathOracle(num_workers=0)
    assert oracle.same_answer("0.5", "\\frac12") is False
    assert oracle.same_answer("0.5", " 0.5") is True  # equal text needs no math-verify
