"""examples/data_preprocess/*.py rebuild the prepared files in ../shared/data from the hub's form of the data.

Each script runs as users run it (a subprocess from the repository root), offline: the input is a local copy
with the hub dataset's columns, and the output rows must equal the shared rows (or, for DeepScaleR, the
documented split of them).
"""

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest

REPO = Path(__file__).resolve().parents[1]


def prepare(script: str, local_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"examples/data_preprocess/{script}.py", "--local_dir", str(local_dir), *flags],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    with open(path) as lines:  # not str.splitlines(), which also splits at the U+2028 inside some questions
        return [json.loads(line) for line in lines]


def read_rows_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as lines:
        return [json.loads(line) for line in lines]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def without(rows: list[dict], column: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k != column} for row in rows]


@pytest.mark.slow
def test_gsm8k_adds_final_answer_as_the_shared_files_have_it(shared_data, tmp_path):
    # openai/gsm8k's columns are question and answer; final_answer (commas removed in 93 rows) is the script's.
    shared = {split: read_rows(shared_data / "gsm8k" / f"{split}.jsonl") for split in ("train", "test")}
    for split, rows in shared.items():
        write_rows(tmp_path / "hub" / f"{split}.jsonl", without(rows, "final_answer"))
    done = prepare("gsm8k", tmp_path / "out", "--input", str(tmp_path / "hub"))
    assert done.returncode == 0, done.stderr[-3000:]
    for split, rows in shared.items():
        assert read_rows(tmp_path / "out" / f"{split}.jsonl") == rows


@pytest.mark.slow
def test_countdown_splits_by_row_and_numbers_the_hub_rows(shared_data, tmp_path):
    # The hub's rows have target and nums; hf_row is the script's. 10,240 + 1,024 is the local head's split.
    shared = read_rows(shared_data / "countdown" / "train_head.jsonl")
    hub_form = write_rows(tmp_path / "hub.jsonl", without(shared, "hf_row"))
    done = prepare(
        "countdown", tmp_path / "out", "--input", str(hub_form), "--train_size", "10240", "--test_size", "1024"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_rows(tmp_path / "out" / "train.jsonl") == shared[:10240]
    assert read_rows(tmp_path / "out" / "test.jsonl") == shared[10240:]
    # TinyZero's default split needs 328,704 rows: a short input is refused, not split into an empty test set.
    too_short = prepare("countdown", tmp_path / "short", "--input", str(hub_form))
    assert too_short.returncode == 2 and "has 11264 rows" in too_short.stderr and "need 328704" in too_short.stderr
    assert not (tmp_path / "short" / "test.jsonl").exists()


@pytest.mark.slow
def test_deepscaler_holds_out_siirls_split(shared_data, tmp_path):
    source = shared_data / "deepscaler" / "train_partial.jsonl.gz"
    done = prepare("deepscaler", tmp_path / "out", "--input", str(source))
    assert done.returncode == 0, done.stderr[-3000:]
    train, test = (read_rows(tmp_path / "out" / f"{split}.jsonl") for split in ("train", "test"))
    shared = [{"problem": row["problem"], "answer": row["answer"]} for row in read_rows_gz(source)]
    assert len(test) == 3176 and len(train) == 28583  # ceil(10%) of 31,759 held out
    assert Counter(map(json.dumps, train + test)) == Counter(map(json.dumps, shared))  # every row once, unchanged
    # The rows and order siiRL's deepscaler.py gives: train_test_split(test_size=0.1, seed=15) of the same rows.
    expected = datasets.Dataset.from_list(shared).train_test_split(test_size=0.1, seed=15)
    assert test == expected["test"].to_list() and train == expected["train"].to_list()


@pytest.mark.slow
def test_math500_keeps_the_rows(shared_data, tmp_path):
    done = prepare("math500", tmp_path / "out", "--input", str(shared_data / "math500"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_rows(tmp_path / "out" / "test.jsonl") == read_rows(shared_data / "math500" / "test.jsonl")
