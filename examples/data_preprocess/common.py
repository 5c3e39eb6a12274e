"""What the four data scripts share: read a source (hub name or local copy), write the splits --prompt_data reads.

The output is a folder with one `<split>.jsonl` per split (`--prompt_data DIR --train_split train
--eval_split test`). Rows keep their columns untemplated: the recipes render prompts with
`--prompt_template` (and `--apply-chat-template`), so one prepared folder serves every template.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import datasets

from oat_cpgd.data import load_split


def argument_parser(description: str, hub_name: str) -> argparse.ArgumentParser:
    """`--local_dir` and `--input`; a script adds its own options to the parser it gets back."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_dir", required=True, help="output folder, one <split>.jsonl per split")
    parser.add_argument(
        "--input",
        default=hub_name,
        help=f"the Hugging Face dataset (default {hub_name}) or a local copy of it: a folder of "
        "<split>.jsonl/.json/.parquet files, a single file (split train) or a datasets.save_to_disk folder",
    )
    return parser


def load(source: str, split: str, hub_config: str | None = None) -> datasets.Dataset:
    """One split of `source`, read as --prompt_data reads it; `hub_config` names the hub dataset's config."""
    if hub_config is None or Path(source).expanduser().exists():
        return load_split(source, split)
    return datasets.load_dataset(source, hub_config, split=split)


def save(splits: dict[str, datasets.Dataset], local_dir: str) -> None:
    """Write each split to `<local_dir>/<split>.jsonl`.

    Each file is written aside and renamed, so a file that exists is complete (the recipe
    scripts prepare their data only when its files are missing).
    """
    out = Path(local_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for name, dataset in splits.items():
        path = out / f"{name}.jsonl"
        partial = path.with_name(path.name + ".partial")
        dataset.to_json(partial, lines=True, force_ascii=False)
        os.replace(partial, path)
        print(f"{path}: {len(dataset)} rows, columns {dataset.column_names}")
