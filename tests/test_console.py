"""The console of a run (oat_cpgd.console): what reaches it, and what goes to the run's log files instead.

A real run's console is checked by tests/test_recipes.py (quiet, and with --verbose)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from oat_cpgd import console
from oat_cpgd.run_log import EVAL_ACCURACY, summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DRIVER = """
import logging, os, sys, warnings
from pathlib import Path
from oat_cpgd import console

import ray  # its logger has its own console handler
with console.Console(Path(sys.argv[1]), verbose=False) as con:
    print("a library's print")
    os.write(2, b"C-level [NUMA] notice\\n")
    logging.getLogger("vllm.engine").warning("chunked prefill is off")
    logging.getLogger("DeepSpeed").info("ds info")
    warnings.warn("a deprecation", DeprecationWarning, stacklevel=1)
    logging.getLogger("oat_cpgd.interface").info("placement: learner 0 -> node 127.0.0.1")
    logging.getLogger("oat_cpgd.roles").warning("actor 0 restarted")
    logging.getLogger("torch.distributed").error("a collective failed")
    logging.getLogger("ray").error("ray's own handler writes to the file")
    con.write("summary line")
print("after")
logging.getLogger("oat_cpgd.roles").warning("after the run")
assert logging.getLogger().level == logging.WARNING and not logging.getLogger().handlers
"""


def python(script: str, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *argv], env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_console_shows_own_warnings_and_errors_and_the_log_file_gets_everything(tmp_path):
    done = python(DRIVER, str(tmp_path))
    assert done.returncode == 0, done.stderr
    # Then everything is back as it was.
    assert done.stdout == "after\n"
    assert done.stderr.splitlines() == [
        "WARNING oat_cpgd.roles: actor 0 restarted",
        "ERROR torch.distributed: a collective failed",
        "summary line",
        "after the run",
    ]
    log = (tmp_path / "logs" / "driver.log").read_text()
    for line in ["a library's print", "C-level [NUMA] notice", "chunked prefill is off", "ds info", "a deprecation",
                 "placement: learner 0", "actor 0 restarted", "ray's own handler"]:  # fmt: skip
        assert line in log


def test_verbose_changes_nothing(tmp_path, capfd):
    with console.Console(tmp_path, verbose=True) as con:
        print("a library's print")
        assert con.stream is sys.stderr
    assert capfd.readouterr().out == "a library's print\n"
    assert not (tmp_path / "logs").exists()


def test_poll_shows_the_warnings_roles_wrote_once(tmp_path, capfd):
    logs = tmp_path / "logs"
    logs.mkdir()
    earlier = "2026-12-02 10:00:00,000 WARNING oat_cpgd.actors.actor: from the run this one resumes\n"
    (logs / "learner0.log").write_text(earlier)
    with console.Console(tmp_path, verbose=False) as con:
        role_log = logs / "actor0.log"
        role_log.write_text(
            "INFO 12-03 14:46:55 [cpu_worker.py:140] vLLM noise\n"
            "2026-12-03 14:46:55,100 WARNING oat_cpgd.actors.actor: a truncated response was penalised\n"
            "2026-12-03 14:46:55,200 INFO oat_cpgd.actors.actor: an info line\n"
            "2026-12-03 14:46:55,300 WARNING oat_cpgd.actors.actor: a line still being writ"
        )
        con.poll()
        with open(role_log, "a") as file:
            file.write("ten\n")
        con.poll()
        con.poll()
    assert capfd.readouterr().err.splitlines() == [
        "WARNING oat_cpgd.actors.actor (actor0): a truncated response was penalised",
        "WARNING oat_cpgd.actors.actor (actor0): a line still being written",
    ]


def test_an_error_names_the_failed_role_and_shows_its_log(tmp_path, capfd):
    import ray

    log = tmp_path / "logs" / "learner1.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(30)) + "RuntimeError: CUDA out of memory\n")
    console.ROLE_LOGS["ab12"] = ("learner1", log)
    died = ray.exceptions.ActorDiedError()
    died.actor_id = "ab12"
    with pytest.raises(RuntimeError) as raised:
        with console.Console(tmp_path, verbose=False):
            raise RuntimeError("learner rank 1 died (ActorDiedError), so the run stops") from died
    (note,) = raised.value.__notes__
    assert note.startswith(f"learner1 failed; its log: {log}\nits last 20 lines:\n")
    assert note.endswith("  | RuntimeError: CUDA out of memory") and "line 10" not in note
    console.ROLE_LOGS["cd34"] = ("actor0", log.parent / "actor0.log")
    with pytest.raises(RuntimeError) as raised:  # as ray.get raises a role's exception: the id in its text
        with console.Console(tmp_path, verbose=False):
            raise RuntimeError("ray::Actor.generate() (pid=1, ip=127.0.0.1, actor_id=cd34, repr=<Actor>)")
    assert raised.value.__notes__ == [f"actor0 failed; its log: {log.parent / 'actor0.log'}"]
    with pytest.raises(RuntimeError) as raised:  # its log ends with the traceback the error shows: not again
        with console.Console(tmp_path, verbose=False):
            raise RuntimeError("RuntimeError: CUDA out of memory") from died
    assert raised.value.__notes__ == [f"learner1 failed; its log: {log}"]
    with pytest.raises(ValueError) as raised:  # no role named: where the logs are
        with console.Console(tmp_path, verbose=False):
            raise ValueError("bad")
    assert raised.value.__notes__ == [f"logs (vLLM, Ray, DeepSpeed, torch): {log.parent}/ driver.log learner1.log"]


def test_a_role_sends_its_output_and_its_children_output_to_its_log(tmp_path):
    log = tmp_path / "run" / "logs" / "actor0.log"
    script = textwrap.dedent("""
        import logging, os, subprocess, sys
        from oat_cpgd.console import send_role_output_to_log
        print("before")
        send_role_output_to_log()
        print("a print")
        os.write(2, b"C-level notice\\n")
        subprocess.run([sys.executable, "-c", "print('a child process')"])
        logging.getLogger("oat_cpgd.actors.actor").warning("a role's warning")
    """)
    done = python(script, env={console.ROLE_LOG_ENV: str(log)})
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("before\n", "")
    text = log.read_text()
    for line in ["a print", "C-level notice", "a child process"]:
        assert line in text.splitlines()
    assert console.OWN_WARNING.match(text.splitlines()[-1]).groups() == (
        "WARNING", "oat_cpgd.actors.actor", "a role's warning",
    )  # fmt: skip


def test_role_env_names_the_role_log_in_the_run_folder_unless_verbose(tmp_path):
    from oat_cpgd.args import CPGDArgs

    args = CPGDArgs(save_path=str(tmp_path), wb_run_name="run")
    assert console.role_env(args, "actor0") == {console.ROLE_LOG_ENV: str(tmp_path / "run" / "logs" / "actor0.log")}
    args.verbose = True
    assert console.role_env(args, "actor0") == {}


def test_summary(tmp_path):
    rows = [{"step": 0, EVAL_ACCURACY: 0.0}, {"step": 1, "train/reward_mean": 0.5}, {"step": 2, EVAL_ACCURACY: 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "driver.log").write_text("")
    assert summary(tmp_path, 12.3).splitlines() == [
        "2 steps in 12 s; eval accuracy 0.0% at step 0 -> 50.0% at step 2",
        f"run folder: {tmp_path}",
        f"logs (vLLM, Ray, DeepSpeed, torch): {tmp_path / 'logs'}/ driver.log",
    ]
    assert summary(tmp_path, 12.3, verbose=True).splitlines()[-1] == "logs: printed on the console (--verbose)"


def test_the_summary_of_a_run_that_healed_counts_its_restarts(tmp_path):
    rows = [
        {"step": 1, "misc/actor_restarts": 1, "misc/learner_restarts": 0, "misc/steps_replayed": 0},
        {"step": 2, "misc/actor_restarts": 1, "misc/learner_restarts": 1, "misc/steps_replayed": 3},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert summary(tmp_path, 1.0).splitlines()[1] == "healed: 2 actor restarts, 1 learner restarts, 3 steps replayed"
