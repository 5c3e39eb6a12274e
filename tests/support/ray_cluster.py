"""Stopping the Ray clusters a test started itself, by their processes, never `ray stop` (it stops every cluster of the user)."""

import os

import psutil


def cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes of the Ray cluster whose session files are under `temp_dir`, and their children.

    Every process Ray starts (gcs_server, raylet, agents, log monitor, workers) names its session
    or temp folder on its command line, and `temp_dir` is this test's alone: other clusters on the
    machine are left alone, unlike `ray stop`, which stops every cluster of the user.
    """
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in process.info["cmdline"] or ()):
                found[process.pid] = process
                found.update((child.pid, child) for child in process.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_cluster(temp_dir: str) -> None:
    """Terminate this cluster's processes (SIGTERM, then SIGKILL what is left after 20 s)."""
    processes = cluster_processes(temp_dir)
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=20)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=10)


def kill_cluster(temp_dir: str) -> None:
    """SIGKILL this cluster's processes, its workers included (listed before any dies, while they are still the raylet's children)."""
    for process in cluster_processes(temp_dir):
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
