"""What the weight-sync check costs a step: its wait, and the weight digest's time, against the step time.

    python benchmark/sync_check_cost.py [--steps 20] [--warmup 3]

The job is benchmark/step_time.py's oat_cpgd side (the tiny model, 8 GSM8K prompts x 8 samples, 32 tokens,
synchronous, micro-batches of 8), with the defaults: every sync checked on the probe (collected while the
next rollout runs: only what is left of it is waited for, misc/sync_check_time), the weights digested at
the first check and every --weight_digest_every (10) syncs (misc/weight_digest_time). Prints medians and
maxima over the steps after --warmup; writes .cache/bench/sync_check_cost.json. The aim (issue 24): the
check at most 2% of a step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics

import step_time  # benchmark/step_time.py (this script's folder is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    options = parser.parse_args()
    from oat_cpgd.models.tiny import build_tiny_model

    out = step_time.OUT_DIR / "sync_check_cost"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model = str(build_tiny_model(step_time.CACHE / "test_models" / "tiny"))
    step_time.run_oat(model, step_time.Setting.parse("oat:"), options.steps, step_time.job.NEW_TOKENS, out)
    rows = [json.loads(line) for line in (out / "oat" / "metrics.jsonl").read_text().splitlines()]
    steps = rows[options.warmup :]
    step = [row["misc/step_time"] for row in steps]
    check = [row.get("misc/sync_check_time", 0.0) for row in steps]
    share = [c / s for c, s in zip(check, step, strict=True)]
    digests = [row["misc/weight_digest_time"] for row in rows if "misc/weight_digest_time" in row]
    result = {
        "steps": len(steps),
        "median_step_s": statistics.median(step),
        "median_check_wait_s": statistics.median(check),
        "max_check_wait_s": max(check),
        "median_check_share": statistics.median(share),
        "max_check_share": max(share),
        "digest_s": digests,
        "median_sync_s": statistics.median(row["misc/weight_sync_time"] for row in steps),
    }
    (step_time.OUT_DIR / "sync_check_cost.json").write_text(json.dumps(result, indent=2))
    print(f"{len(steps)} steps after {options.warmup} warm-up; median step {result['median_step_s']:.2f} s")
    print(
        f"sync check wait: median {result['median_check_wait_s'] * 1000:.1f} ms "
        f"({result['median_check_share']:.2%} of a step), max {result['max_check_wait_s'] * 1000:.1f} ms "
        f"({result['max_check_share']:.2%}); target <= 2%"
    )
    print(f"weight digest: {len(digests)} runs, {', '.join(f'{d * 1000:.0f} ms' for d in digests)}")
    print(f"weight sync: median {result['median_sync_s'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
