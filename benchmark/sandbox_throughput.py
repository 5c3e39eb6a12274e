"""Start-up cost of oat_cpgd.tools.run_python: calls of a trivial program, one at a time and two at once.

    python benchmark/sandbox_throughput.py [--calls 50]

Every call makes new namespaces, mounts a new root and starts a Python interpreter, so the time of
`print(1)` is the sandbox's overhead per call. Reports the median latency of one call, the
throughput (calls/s) with 1 and 2 calls running at once, and the CPU time (user + system) of all the
processes a call starts: less sensitive to other load on a shared machine, and N idle cores run at
most N / that calls a second. Needs root (see the sandbox's docstring).
"""

import argparse
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from oat_cpgd.tools import check_sandbox, run_python


def timed_call() -> float:
    start = time.perf_counter()
    result = run_python("print(1)", timeout_s=10, memory_mb=256, max_output_bytes=1000)
    assert result.stdout == "1\n", result
    return time.perf_counter() - start


def children_cpu() -> float:
    # Every process of a call is reaped by its parent up to unshare, which this process reaps.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="calls per setting")
    args = parser.parse_args()
    check_sandbox()  # its one-off probe stays out of the timings
    for workers in (1, 2):
        with ThreadPoolExecutor(workers) as pool:
            start, cpu_start = time.perf_counter(), children_cpu()
            latencies = list(pool.map(lambda _: timed_call(), range(args.calls)))
            elapsed, cpu = time.perf_counter() - start, children_cpu() - cpu_start
        print(
            f"{workers} at once: median {1000 * statistics.median(latencies):.0f} ms a call, "
            f"{args.calls / elapsed:.1f} calls/s, {1000 * cpu / args.calls:.0f} ms CPU a call ({args.calls} calls)"
        )


if __name__ == "__main__":
    main()
