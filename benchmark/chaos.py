"""More chaos draws than `make test` runs: a role killed at a seeded moment of a run, which must heal.

    python benchmark/chaos.py [--draws 12]

Runs tests/test_chaos.py's draws 0..N-1 (CHAOS_DRAWS=N): each kills one role (an actor or a learner
rank) in one of its calls (rollout, learn, sync, probe, evaluation, checkpoint), before or after the
call's work, and checks that the run finishes, logs every step once, counts the restart and ends with
the undisturbed run's weights. Writes .cache/bench/chaos.json: each draw's plan, outcome and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / ".cache" / "bench" / "chaos.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=12)
    draws = parser.parse_args().draws
    OUT.parent.mkdir(parents=True, exist_ok=True)
    report = OUT.with_suffix(".xml")
    subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_chaos.py", "-k", "chaos_draw", "-q", f"--junitxml={report}"],
        cwd=REPO,
        env={**os.environ, "CHAOS_DRAWS": str(draws)},
    )
    results = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        plan = case.get("name").removeprefix("test_chaos_draw[").removesuffix("]")
        results.append({"plan": plan, "healed": not failed, "seconds": float(case.get("time"))})
    OUT.write_text(json.dumps(results, indent=2))
    for result in results:
        print(f"{result['plan']:<40} {'healed' if result['healed'] else 'FAILED':<7} {result['seconds']:6.0f} s")
    print(f"{sum(r['healed'] for r in results)} of {len(results)} draws healed; {OUT}")


if __name__ == "__main__":
    main()
