"""`make demo`, shortened: CPGD must raise the warm-started model's accuracy on held-out questions,
and the console shows the progress bar and the summary, not what vLLM, Ray and DeepSpeed print."""

import subprocess
import sys
from pathlib import Path

import pytest
from support.console import check_quiet_console  # tests/ is on sys.path

from oat_cpgd.experiment import demo
from oat_cpgd.plot import read_rows

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

DEMO_TEST_STEPS = 10
"""The full demo runs 40 steps; its held-out accuracy has risen from ~0 to ~70% by step 10."""
MIN_GAIN = 0.2


def test_the_split_is_disjoint_and_covers_every_question():
    train, held_out = demo.split_questions()
    questions = [row["question"] for row in train + held_out]
    assert len(held_out) == demo.NUM_HELD_OUT and len(set(questions)) == len(questions) == len(demo.questions())
    assert all(int(row["answer"]) == eval(row["question"][len("What is ") : -1]) for row in held_out[:50])


def test_cpgd_raises_held_out_accuracy(tmp_path):
    """A shortened demo run (the warm start, cached once built, and fewer CPGD steps), as `make demo` runs
    it: a process with its own Ray cluster, whose console is checked. A learner that does not learn, or
    learns the wrong way (a sign error, a broken advantage), leaves the accuracy near 0."""
    flags = f"--seed 0 --max_steps {DEMO_TEST_STEPS} --out {tmp_path}".split()
    done = subprocess.run(
        [sys.executable, "-m", "oat_cpgd.experiment.demo", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (run_dir,) = tmp_path.glob("demo-seed0-*")
    check_quiet_console(done.stdout + done.stderr, run_dir)
    assert f"curves: {run_dir / 'curves.png'}" in done.stdout
    curve = demo.held_out_accuracy(read_rows(run_dir))
    (first_step, before), (last_step, after) = curve[0], curve[-1]
    assert (first_step, last_step) == (0, DEMO_TEST_STEPS)
    assert after - before >= MIN_GAIN, curve
    # The sums themselves (right in either answer style) are what the warm start taught: RL keeps them.
    assert demo.right_number_share(run_dir, last_step) >= demo.right_number_share(run_dir, first_step) - 0.05
    assert (run_dir / "curves.png").stat().st_size > 0
